"""Train a ViT, a ViT-MoE or a random-routing ViT on Fashion-MNIST, CIFAR or synthetic images.

    python -m experiments.vit_moe.train --config=configs/vit_moe/random.yaml
    python -m experiments.vit_moe.train --resume runs/<name> [train.epochs=20]
    torchrun --standalone --nproc_per_node=2 -m experiments.vit_moe.train --config=configs/vit_moe/vit.yaml
"""
from __future__ import annotations

import sys
from typing import Any

from experiments.vit_moe.config import RunConfig
from trajectory.cli import run_resumable

EXAMPLES = """
python -m experiments.vit_moe.train --config=configs/vit_moe/vit.yaml
python -m experiments.vit_moe.train --config=configs/vit_moe/random.yaml train.consistency_weight=1.0
python -m experiments.vit_moe.train --config=configs/vit_moe/moe.yaml data.source=cifar data.root=data/cifar10
torchrun --standalone --nproc_per_node=2 -m experiments.vit_moe.train --config=configs/vit_moe/vit.yaml
python -m experiments.vit_moe.train --resume runs/vit_moe-random train.epochs=20
"""


def main(argv: list[str] | None = None) -> int:
    def job(cfg: RunConfig, resume_dir: str | None) -> None:
        import os

        from experiments.vit_moe.data import DataError
        from experiments.vit_moe.trainer import train
        from trajectory.checkpoint_folder import CHECKPOINT_DIR
        from trajectory.configutil import ConfigError
        try:
            metrics = train(cfg, resume_dir)
        except DataError as err:  # ConfigErrors (CheckpointError too) reach run() as they are
            raise ConfigError(str(err)) from None
        if int(os.environ.get("RANK", 0)) == 0:
            last = metrics["history"][-1]
            print(f"{cfg.model.variant}: test accuracy {last['test_accuracy']:.4f} after "
                  f"{last['epoch']} epoch(s), {last['train_seconds']:.1f} s for the last epoch; "
                  f"parameters {metrics['parameters']}; checkpoint in "
                  f"{os.path.join(cfg.runs_dir, cfg.run_name, CHECKPOINT_DIR)}")

    def saved_config(path: str) -> str:
        from experiments.vit_moe.checkpoint import resumable_config
        return resumable_config(path)

    return run_resumable(RunConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, job, saved_config)


def __getattr__(name: str) -> Any:
    # the trainer (and torch) load on first use: the command line is checked before torch is imported
    from experiments.vit_moe import trainer
    return getattr(trainer, name)


if __name__ == "__main__":
    sys.exit(main())
