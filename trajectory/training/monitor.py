"""Progress bar and tensorboard scalars of a training run (main process only)."""
from __future__ import annotations

import os

import torch


class TrainLogger:
    """With ``budget_minutes`` the bar counts minutes of the time budget (a step total estimated from
    the first steps' speed would overrun or stop short); otherwise it counts steps."""

    def __init__(self, run_dir: str, active: bool, total_steps: int, initial_step: int = 0,
                 budget_minutes: float = 0.0, initial_minutes: float = 0.0):
        self.active = active
        self.in_minutes = bool(budget_minutes)
        self.writer = self.bar = None
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm
        self.writer = SummaryWriter(os.path.join(run_dir, "tb"))
        if self.in_minutes:
            self.bar = tqdm(total=float(budget_minutes), initial=min(initial_minutes, budget_minutes),
                            desc="train", unit="min", dynamic_ncols=True, mininterval=1.0,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} min "
                                       "[{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                            dynamic_ncols=True, mininterval=1.0)
        self.step = initial_step

    def log(self, step: int, metrics: dict) -> None:
        """The trajectory trainer's metrics: train/* scalars, loss per token group, bar postfix."""
        if not self.active:
            return
        self.log_scalars(step, {name: metrics[name] for name in
                                ("loss", "grad_norm", "lr", "tokens_per_s")}, prefix="train")
        self.log_scalars(step, {g: metrics[g] for g in ("obs", "act", "reward", "value")},
                         prefix="loss")
        self.bar.set_postfix(step=self.step, loss=f"{metrics['loss']:.3f}",
                             tok_s=f"{metrics['tokens_per_s']:,.0f}", refresh=False)

    def log_scalars(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
        """Any scalars as ``<prefix>/<name>`` (other trainers of the package use this directly)."""
        if self.active:
            for name, value in scalars.items():
                self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)

    def postfix(self, **values: str) -> None:
        if self.active:
            self.bar.set_postfix(refresh=False, **values)

    def set_total(self, total_steps: int) -> None:
        """A new step estimate for a bar that counts steps (a bar in minutes keeps its budget)."""
        if self.active and not self.in_minutes:
            self.bar.total = total_steps
            self.bar.refresh()

    def advance(self, step: int, loss: torch.Tensor, minutes: float | None = None) -> None:
        """Move the bar to ``step`` (or, counting the budget, to ``minutes`` spent)."""
        self.step = step
        if not self.active:
            return
        if self.in_minutes and minutes is not None:
            self.bar.update(min(minutes, self.bar.total) - self.bar.n)
        elif not self.in_minutes:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.writer.close()
