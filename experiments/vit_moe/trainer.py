"""The training loop behind ``python -m experiments.vit_moe.train`` (see that module)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from experiments.vit_moe.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    resumable_config,
    save_checkpoint,
)
from experiments.vit_moe.config import RunConfig, TrainConfig
from experiments.vit_moe.data import ImageSet, load_images
from experiments.vit_moe.model import ViT
from trajectory.checkpoint import load_torch_file, restore_weights, trainer_state_file
from trajectory.checkpoint_folder import CHECKPOINT_DIR
from trajectory.configutil import ConfigError
from trajectory.training import distributed
from trajectory.training.monitor import TrainLogger
from trajectory.training.optim import param_groups, warmup_cosine


def lr_at(step: int, total_steps: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``."""
    warmup = tc.warmup_steps or max(1, total_steps // 20)
    return warmup_cosine(step, tc.lr, warmup, total_steps, tc.min_lr_ratio)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """0.5 * (KL(p_a || p_b) + KL(p_b || p_a)) for logits a, b [B, K], mean over the batch."""
    log_a, log_b = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
    return 0.5 * ((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(dim=-1).mean()


def compute_loss(forward, images: torch.Tensor, labels: torch.Tensor,
                 cfg: RunConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy + balance_weight * load balancing (moe) + consistency_weight * KL (random).

    With consistency regularisation (AdaMix) the batch is stacked twice in one forward call, so every
    image gets two independent random routings (and DDP sees one forward per step).
    """
    if cfg.train.consistency_weight:
        logits, aux = forward(torch.cat([images, images]))  # [2B, K]
        first, second = logits.chunk(2)
        ce = 0.5 * (F.cross_entropy(first, labels) + F.cross_entropy(second, labels))
        consistency = symmetric_kl(first, second)
    else:
        logits, aux = forward(images)  # [B, K]
        ce, consistency = F.cross_entropy(logits, labels), logits.new_zeros(())
    loss = ce + cfg.model.balance_weight * aux + cfg.train.consistency_weight * consistency
    return loss, {"loss": ce.detach(), "balance": aux.detach(), "consistency": consistency.detach()}


@torch.no_grad()
def evaluate(model: ViT, images: ImageSet, ctx: distributed.DistContext, batch_size: int) -> dict:
    """Test accuracy and loss; each rank scores every world_size-th image, then ranks combine."""
    was_training = model.training
    model.eval()
    index = torch.arange(ctx.rank, len(images.test_labels), ctx.world_size)
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # correct, loss sum, count
    for chunk in index.split(batch_size):
        x = images.normalise(images.test_images[chunk]).to(ctx.device)
        y = images.test_labels[chunk].to(ctx.device)
        logits, _ = model(x)
        totals += torch.stack([(logits.argmax(-1) == y).sum().double(),
                               F.cross_entropy(logits, y, reduction="sum").double(),
                               torch.tensor(float(len(chunk)), dtype=torch.float64, device=ctx.device)])
    totals = distributed.all_mean(ctx, totals)
    model.train(was_training)
    return {"accuracy": (totals[0] / totals[2]).item(), "loss": (totals[1] / totals[2]).item()}


def parameter_counts(model: ViT) -> dict[str, int]:
    return {"total": model.num_parameters(), "inference": model.inference_parameters()}


class Trainer:
    """One run's model, optimizer and data order; :meth:`fit` trains it to the end.

    :meth:`train_epoch` advances it by one epoch and :meth:`epoch_steps` by one step at a time, so
    several runs can take turns in one process (as the benchmark's do).
    """

    def __init__(self, cfg: RunConfig, images: ImageSet, ctx: distributed.DistContext, quiet: bool = False):
        tc = cfg.train
        if tc.batch_size % ctx.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the number of "
                              f"processes ({ctx.world_size})")
        self.cfg, self.images, self.ctx = cfg, images, ctx
        self.run_dir = os.path.join(cfg.runs_dir, cfg.run_name)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = ViT(cfg.model, images.spec).to(ctx.device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, tc.weight_decay), lr=tc.lr,
                                           betas=tuple(tc.betas))
        # The forward goes through the wrapper, or gradients are never all-reduced. Every expert
        # joins each step's graph (see moe.dispatch), so DDP needs no search for unused parameters.
        self.forward = DistributedDataParallel(self.model) if ctx.enabled else self.model
        self.rng_state = epoch_rng_state(cfg.seed, ctx.rank, 0)  # see _own_rng
        self.sampler = DistributedSampler(images.train_labels, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        self.local_batch = tc.batch_size // ctx.world_size
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(images.train_labels)} training images are fewer than one batch of "
                              f"{tc.batch_size}; lower train.batch_size")
        all_epochs = tc.epochs * self.steps_per_epoch
        self.total_steps = min(all_epochs, tc.max_steps or all_epochs)
        self.step = self.epoch = 0
        self.logger = TrainLogger(self.run_dir, ctx.is_main and not quiet, self.total_steps)
        self.metrics = {"variant": cfg.model.variant, "parameters": parameter_counts(self.model),
                        "steps_per_epoch": self.steps_per_epoch, "world_size": ctx.world_size,
                        "history": []}

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on the training images at indices ``batch`` [b]."""
        images, tc = self.images, self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total_steps, tc)
        x = images.normalise(images.train_images[batch]).to(self.ctx.device)  # [b, C, H, W]
        loss, parts = compute_loss(self.forward, x, images.train_labels[batch].to(self.ctx.device), self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.step += 1
        return parts

    def train_epoch(self) -> dict:
        """Train one epoch (or up to ``max_steps``), score the test split, save; returns its record."""
        for _ in self.epoch_steps():
            pass
        return self.metrics["history"][-1]

    def epoch_steps(self) -> Iterator[dict[str, torch.Tensor]]:
        """:meth:`train_epoch` one step at a time: yields after each step, so runs can take turns
        step by step and load from other processes on a shared machine falls on each alike. The
        epoch's time counts this run's own steps only."""
        self.sampler.set_epoch(self.epoch)
        # random draws depend only on (seed, rank, epoch), so a run resumed at an epoch end is exact
        self.rng_state = epoch_rng_state(self.cfg.seed, self.ctx.rank, self.epoch)
        order = torch.tensor(list(self.sampler))[:self.steps_per_epoch * self.local_batch]
        self.model.train()
        seconds, loss_sum, n_batches = 0.0, 0.0, 0
        for batch in order.split(self.local_batch):
            start = time.perf_counter()
            with self._own_rng():
                parts = self.train_step(batch)
            seconds += time.perf_counter() - start
            loss_sum, n_batches = loss_sum + parts["loss"].item(), n_batches + 1
            if self.step % self.cfg.train.log_every == 0 or self.step == 1:
                self.logger.log_scalars(self.step, {**{k: v.item() for k, v in parts.items()},
                                                    "lr": self.optimizer.param_groups[0]["lr"]}, "train")
                self.logger.postfix(loss=f"{parts['loss'].item():.3f}", epoch=str(self.epoch))
            self.logger.advance(self.step, parts["loss"])
            yield parts
            if self.done:
                break
        self.epoch += 1
        self._end_epoch(seconds, loss_sum / max(1, n_batches))

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Draw routing and dropout from this run's own CPU random stream, so runs taking turns do not
        change each other's results."""
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        try:
            yield
        finally:
            self.rng_state = torch.get_rng_state()
            torch.set_rng_state(outer)

    def _end_epoch(self, seconds: float, train_loss: float) -> dict:
        start = time.perf_counter()
        test = evaluate(self.model, self.images, self.ctx, self.cfg.train.eval_batch_size)
        record = {"epoch": self.epoch, "step": self.step, "train_seconds": seconds,
                  "test_seconds": time.perf_counter() - start, "train_loss": train_loss,
                  "test_accuracy": test["accuracy"], "test_loss": test["loss"]}
        self.metrics["history"].append(record)
        self.logger.log_scalars(self.step, {"accuracy": test["accuracy"], "loss": test["loss"]}, "test")
        self.logger.log_scalars(self.step, {"epoch_seconds": seconds}, "time")
        self.logger.postfix(loss=f"{train_loss:.3f}", test_acc=f"{test['accuracy']:.4f}",
                            epoch=str(self.epoch))
        if self.ctx.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "step": self.step, "epoch": self.epoch}
            folder = os.path.join(self.run_dir, CHECKPOINT_DIR)
            save_checkpoint(folder, self.cfg, self.model, self.metrics, state)
        return record

    def restore(self, model_state: dict, metrics: dict, state: dict) -> None:
        """Continue a run saved at the end of an epoch (same data; the schedule follows train.epochs)."""
        restore_weights(self.model, self.optimizer, model_state, state["optimizer"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.metrics["history"] = list(metrics["history"])
        self.logger.advance(self.step, None)

    def fit(self) -> dict:
        while not self.done:
            self.train_epoch()
        self.logger.close()
        distributed.barrier(self.ctx)  # ranks leave together: none tears down while rank 0 writes
        return self.metrics


def epoch_rng_state(seed: int, rank: int, epoch: int) -> torch.Tensor:
    key = int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])
    return torch.Generator().manual_seed(key).get_state()


def train(cfg: RunConfig, resume_dir: str | None = None) -> dict:
    """Train for ``train.epochs`` (or ``train.max_steps``); returns the metrics of the run.
    ``resume_dir`` continues that run from its last epoch."""
    resumed = None
    if resume_dir is not None:
        _, model, metrics = load_checkpoint(resume_dir)
        state = load_torch_file(trainer_state_file(resumable_config(resume_dir)))
        resumed = (model.state_dict(), metrics, state)
        run_dir = os.path.dirname(checkpoint_dir(resume_dir).rstrip("/"))
        cfg = dataclasses.replace(cfg, runs_dir=os.path.dirname(run_dir), name=os.path.basename(run_dir))
    ctx = distributed.setup(cfg.device)
    try:
        trainer = Trainer(cfg, load_images(cfg.data, seed=cfg.seed), ctx)
        if resumed is not None:
            trainer.restore(*resumed)
        return trainer.fit()
    finally:
        distributed.cleanup()
