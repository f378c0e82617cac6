"""Run by torchrun in tests: train a tiny model for N steps with DDP and save rank 0's parameters."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _synthetic import LAYOUT, TokenWindows, discretizer, tiny_config  # noqa: E402

from trajectory.training import distributed  # noqa: E402
from trajectory.training.trainer import Trainer  # noqa: E402


def main(out_dir: str, steps: int, core: str) -> None:
    torch.set_num_threads(1)
    cfg = tiny_config(out_dir)
    cfg.model.core = core
    ctx = distributed.setup("cpu")
    try:
        trainer = Trainer(cfg, TokenWindows(), discretizer(), LAYOUT, ctx, out_dir)
        trainer.fit(max_steps=steps)
        if ctx.is_main:
            torch.save(trainer.model.state_dict(), os.path.join(out_dir, "ddp_params.pt"))
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
