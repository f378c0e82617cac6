"""Train a trajectory model (GPT / Hyena / RetNet / S5 core) on an offline RL dataset.

    python train.py --config=configs/cpu/halfcheetah_medium_gpt.yaml
    torchrun --standalone --nproc_per_node=2 train.py --config=configs/cpu/halfcheetah_medium_s5.yaml
    python train.py --resume runs/<name>
"""
import sys

from trajectory.cli import run_resumable
from trajectory.config import TrainRunConfig

EXAMPLES = """
python train.py --config=configs/medium/halfcheetah_medium_hyena.yaml --device=cuda
python train.py --config=configs/cpu/halfcheetah_medium_gpt.yaml train.budget_minutes=20 model.n_layers=2
torchrun --standalone --nproc_per_node=2 train.py --config=configs/cpu/halfcheetah_medium_s5.yaml
python train.py --resume runs/<name> [train.budget_minutes=10 ...]
"""


def _train(cfg: TrainRunConfig, resume_dir: str | None):
    from trajectory.models.cores import check_core_config
    check_core_config(cfg.model.core, cfg.model.core_options)  # torch-free: reported at once
    from trajectory.data.sources import check_source
    check_source(cfg.data.source, download=cfg.data.download, cache_dir=cfg.data.cache_dir)
    from trajectory.training.trainer import train
    return train(cfg, resume_dir=resume_dir)


def _resumable_config(path: str) -> str:
    from trajectory.checkpoint import resumable_config
    return resumable_config(path)


def main(argv=None) -> int:
    # torch is imported only once the command line has parsed: a mistyped key is reported at once
    # resuming continues the saved run: its config, with the CLI's overrides (e.g. budgets)
    return run_resumable(TrainRunConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, _train,
                         _resumable_config)

if __name__ == "__main__":
    sys.exit(main())
