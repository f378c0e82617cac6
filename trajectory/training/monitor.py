"""Progress bar and tensorboard scalars of a training run (main process only)."""
from __future__ import annotations

import os

import torch


class TrainLogger:
    def __init__(self, run_dir: str, active: bool, total_steps: int, initial_step: int = 0):
        self.active = active
        self.writer = self.bar = None
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm
        self.writer = SummaryWriter(os.path.join(run_dir, "tb"))
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                        dynamic_ncols=True, mininterval=1.0)

    def log(self, step: int, metrics: dict) -> None:
        """The trajectory trainer's metrics: train/* scalars, loss per token group, bar postfix."""
        if not self.active:
            return
        self.log_scalars(step, {name: metrics[name] for name in
                                ("loss", "grad_norm", "lr", "tokens_per_s")}, prefix="train")
        self.log_scalars(step, {g: metrics[g] for g in ("obs", "act", "reward", "value")},
                         prefix="loss")
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:,.0f}",
                             refresh=False)

    def log_scalars(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
        """Any scalars as ``<prefix>/<name>`` (other trainers of the package use this directly)."""
        if self.active:
            for name, value in scalars.items():
                self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)

    def postfix(self, **values: str) -> None:
        if self.active:
            self.bar.set_postfix(refresh=False, **values)

    def set_total(self, total_steps: int) -> None:
        """A time budget became a step estimate: give the bar a meaningful end and ETA."""
        if self.active:
            self.bar.total = total_steps
            self.bar.refresh()

    def advance(self, step: int, loss: torch.Tensor) -> None:
        if self.active:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.writer.close()
