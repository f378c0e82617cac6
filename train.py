"""Train a trajectory model (GPT / Hyena / RetNet / S5 core) on an offline RL dataset.

    python train.py --config=configs/cpu/halfcheetah_medium_gpt.yaml
    torchrun --standalone --nproc_per_node=2 train.py --config=configs/cpu/halfcheetah_medium_s5.yaml
    python train.py --resume runs/<name>
"""
import os
import sys

from trajectory.cli import run
from trajectory.config import TrainRunConfig

EXAMPLES = """
python train.py --config=configs/medium/halfcheetah_medium_hyena.yaml --device=cuda
python train.py --config=configs/cpu/halfcheetah_medium_gpt.yaml train.budget_minutes=20 model.n_layers=2
torchrun --standalone --nproc_per_node=2 train.py --config=configs/cpu/halfcheetah_medium_s5.yaml
python train.py --resume runs/<name> [train.budget_minutes=10 ...]
"""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from trajectory.training.trainer import resume_argv, train
    argv, resume_dir = resume_argv(argv)
    if resume_dir is not None and not any(a.startswith("--config") for a in argv):
        # resuming continues the saved run: its config, with the CLI's overrides (e.g. budgets)
        from trajectory.checkpoint import checkpoint_dir
        argv.insert(0, f"--config={os.path.join(checkpoint_dir(resume_dir), 'config.yaml')}")
    return run(TrainRunConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES,
               lambda cfg: train(cfg, resume_dir=resume_dir))


if __name__ == "__main__":
    sys.exit(main())
