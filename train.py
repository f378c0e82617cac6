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


def main(argv=None) -> int:
    from trajectory.checkpoint import resumable_config
    from trajectory.training.trainer import train
    # resuming continues the saved run: its config, with the CLI's overrides (e.g. budgets)
    return run_resumable(TrainRunConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES,
                         lambda cfg, resume_dir: train(cfg, resume_dir=resume_dir), resumable_config)

if __name__ == "__main__":
    sys.exit(main())
