"""The training loop: one code path for CPU, CUDA and torchrun/DDP, with budgets and exact resume.

Exact resume: batches come from a DistributedSampler permutation that depends only on (seed, epoch),
and the checkpoint stores the epoch, the batch index inside it, the optimizer and every RNG state,
so training N steps, saving, and resuming for N more gives the same parameters as 2N in one go.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from trajectory.checkpoint import load_checkpoint, restore_weights, save_checkpoint
from trajectory.checkpoint_folder import (
    CHECKPOINT_DIR,
    CRITIC_DIR,
    clear_run_outputs,
    left_aside,
    train_run_dir,
)
from trajectory.config import TrainRunConfig
from trajectory.configutil import ConfigError, to_dict
from trajectory.io import check_writable_folder, save_text
from trajectory.models.trajectory_model import GROUP_NAMES, TokenLayout, TrajectoryModel
from trajectory.run_lock import run_lock
from trajectory.training import distributed
from trajectory.training.held_out import HeldOutMetrics
from trajectory.training.optim import lr_at, make_optimizer
from trajectory.training.stop_signals import StopSignals, stopped_note

HORIZON_PROBE_STEPS = 10  # steps timed to turn a time budget into a token horizon
HORIZON_UPDATE_STEPS = 200  # then re-measured this often, from the speed after the probe


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    minutes: float = 0.0  # training wall time over all sessions of this run
    horizon_tokens: int = 0  # learning-rate schedule length, fixed once known (saved for resume)
    history: list = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"],
                         0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def fetch_batch(dataset: Dataset, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch dict (x, y, mask, optional resets) on ``device``; vectorised when the dataset can."""
    if hasattr(dataset, "batch"):
        batch = dataset.batch(np.asarray(indices))
    else:
        items = [dataset[i] for i in indices]
        batch = {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0]}
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    """Holds the run's state; :meth:`fit` trains until the epochs or a budget run out."""

    def __init__(self, cfg: TrainRunConfig, dataset: Dataset, discretizer, layout: TokenLayout,
                 ctx: distributed.DistContext, run_dir: str, data_info: dict | None = None,
                 held_out: Dataset | None = None):
        self.cfg, self.dataset, self.discretizer, self.layout = cfg, dataset, discretizer, layout
        self.ctx, self.run_dir, self.data_info = ctx, run_dir, data_info or {}
        self.held_out = (HeldOutMetrics(held_out, discretizer, layout)
                         if held_out is not None and len(held_out) and ctx.is_main else None)
        self.held_out_metrics: dict | None = None
        self.stop_signal: str | None = None  # the signal that stopped the last fit, if one did
        tc = cfg.train
        if tc.batch_size % ctx.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the number "
                              f"of processes ({ctx.world_size})")
        self.local_batch = tc.batch_size // ctx.world_size
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = TrajectoryModel(cfg.model, layout).to(ctx.device)
        self.optimizer = make_optimizer(self.model, tc, ctx.device)
        self.progress = Progress()
        self.sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the dataset has {len(dataset)} windows, fewer than one batch of "
                              f"{tc.batch_size}; lower train.batch_size")
        self.tokens_per_step = tc.batch_size * (layout.max_tokens - 1)  # inputs per window
        self.epoch_tokens = tc.epochs * self.steps_per_epoch * self.tokens_per_step
        wrapped = self.model
        if tc.compile:
            wrapped = torch.compile(wrapped)
        # The forward must go through the DDP wrapper, or gradients are never all-reduced.
        self.forward_model = (DistributedDataParallel(wrapped, device_ids=[ctx.device.index]
                                                      if ctx.device.type == "cuda" else None)
                              if ctx.enabled else wrapped)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if ctx.device.type == "cuda" and tc.bf16 else torch.autocast("cpu", enabled=False))

    # -- state
    def trainer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "progress": vars(self.progress).copy(),
                "rng": rng_state(),
                "world_size": self.ctx.world_size}

    def restore(self, checkpoint) -> None:
        state = checkpoint.trainer_state
        saved_world = state.get("world_size", self.ctx.world_size)
        if saved_world != self.ctx.world_size:
            raise ConfigError(f"the run was trained by {saved_world} process(es) and is resumed by "
                              f"{self.ctx.world_size}: its data order would change; resume with "
                              f"{saved_world}")
        restore_weights(self.model, self.optimizer, checkpoint.model_state, state["optimizer"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])

    def measure_held_out(self, logger) -> None:
        """Held-out metrics of the weights eval will use, main rank only."""
        if self.held_out is None:
            return
        self.held_out_metrics = {"step": self.progress.step, "tokens": self.progress.tokens,
                                 **self.held_out(self.model, self.ctx.device)}
        logger.log_scalars(self.progress.step, {k: v for k, v in self.held_out_metrics.items()
                                                if k not in ("step", "tokens")},
                           prefix="held_out")

    def save(self, metrics: dict) -> None:
        if self.ctx.is_main:
            metrics = {**metrics, "data": self.data_info, "progress": vars(self.progress),
                       "held_out": self.held_out_metrics}
            save_checkpoint(os.path.join(self.run_dir, CHECKPOINT_DIR), self.cfg, self.model,
                            self.discretizer, self.trainer_state(), metrics)

    # -- one optimisation step
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float | torch.Tensor]:
        x, y, mask = batch["x"], batch["y"], batch["mask"]
        lr = lr_at(self.progress.tokens, self.cfg.train,
                   self.progress.horizon_tokens or self.epoch_tokens)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            logits = self.forward_model(x, resets=batch.get("resets"))
        loss, groups = self.model.loss(logits, y, mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.progress.step += 1
        self.progress.tokens += self.tokens_per_step
        return {"loss": loss.detach(), "lr": lr, "grad_norm": grad_norm.detach(), **groups}

    def batches(self):
        """Yield batches from the current position on; the position counts batches handed out."""
        while self.progress.epoch < self.cfg.train.epochs:
            self.sampler.set_epoch(self.progress.epoch)
            order = list(self.sampler)
            while self.progress.batch_in_epoch < self.steps_per_epoch:
                b = self.progress.batch_in_epoch
                self.progress.batch_in_epoch += 1  # before the yield: a stop after it saves this
                yield fetch_batch(self.dataset, order[b * self.local_batch:(b + 1) * self.local_batch],
                                  self.ctx.device)
            self.progress.epoch += 1
            self.progress.batch_in_epoch = 0

    def fit(self, max_steps: int | None = None) -> dict:
        from trajectory.training.monitor import TrainLogger

        tc = self.cfg.train
        done = already_trained(tc, self.progress)
        if done is not None:  # a resumed run with no budget left: no extra step, nothing rewritten
            if self.ctx.is_main:
                print(f"{self.run_dir}: {done[1]}", flush=True)
            return {"step": self.progress.step, "tokens": self.progress.tokens, "stop_reason": done[0]}
        if not self.progress.horizon_tokens and (tc.max_tokens or not tc.budget_minutes):
            self.progress.horizon_tokens = min(tc.max_tokens or self.epoch_tokens, self.epoch_tokens)
        total_steps = self.cfg.train.epochs * self.steps_per_epoch
        if tc.max_tokens:
            total_steps = min(total_steps, -(-tc.max_tokens // self.tokens_per_step))
        timed = bool(tc.budget_minutes) and not tc.max_tokens  # the budget decides when it ends
        logger = TrainLogger(self.run_dir, self.ctx.is_main, total_steps, self.progress.step,
                             budget_minutes=tc.budget_minutes if timed else 0.0,
                             initial_minutes=self.progress.minutes)
        self.model.train()
        with StopSignals() as stop:
            metrics = self._loop(logger, total_steps, max_steps, stop)
        self.stop_signal = stop.received
        self.progress.history.append({"step": self.progress.step, "stop": metrics["stop_reason"]})
        if self.progress.step and (self.held_out_metrics or {}).get("step") != self.progress.step:
            self.measure_held_out(logger)
        self.save(metrics)
        logger.close()
        # Ranks leave together: a gloo rank that tears down its group while rank 0 is still
        # writing the checkpoint can abort the process.
        distributed.barrier(self.ctx)
        return metrics

    def _loop(self, logger, total_steps: int, max_steps: int | None, stop: StopSignals) -> dict:
        """Train until the epochs, a budget, ``max_steps`` or a stop signal ends it; returns the
        metrics of the last step with its ``stop_reason``."""
        tc = self.cfg.train
        session_start, minutes_before = time.time(), self.progress.minutes
        first_step, self._probe = self.progress.step, None
        metrics: dict = {}
        window_start, window_tokens = time.time(), 0
        stop_reason, stats = "epochs", None
        for batch in self.batches():
            stats = self.train_step(batch)
            window_tokens += self.tokens_per_step
            self.progress.minutes = minutes_before + (time.time() - session_start) / 60
            if self.progress.step % tc.log_every == 0 or self.progress.step == total_steps:
                tokens_per_s = window_tokens / max(1e-9, time.time() - window_start)
                metrics = self._reduce(stats, tokens_per_s)
                logger.log(self.progress.step, metrics)
                window_start, window_tokens = time.time(), 0
            logger.advance(self.progress.step, stats["loss"], self.progress.minutes)
            session_steps = self.progress.step - first_step
            if (tc.budget_minutes and not tc.max_tokens and session_steps >= HORIZON_PROBE_STEPS
                    and (session_steps - HORIZON_PROBE_STEPS) % HORIZON_UPDATE_STEPS == 0):
                self._fix_time_horizon(session_start, session_steps)
                logger.set_total(-(-self.progress.horizon_tokens // self.tokens_per_step))
            if tc.held_out_every and self.progress.step % tc.held_out_every == 0:
                self.measure_held_out(logger)
            if tc.save_every and self.progress.step % tc.save_every == 0:
                self.save(metrics)
            if tc.max_tokens and self.progress.tokens >= tc.max_tokens:
                stop_reason = "max_tokens"
                break
            over_budget = bool(tc.budget_minutes) and self.progress.minutes >= tc.budget_minutes
            signalled = stop.received is not None
            # one collective per step under DDP, so that every rank stops at the same step
            if (self.ctx.enabled or over_budget or signalled) and distributed.any_rank(
                    self.ctx, over_budget or signalled):
                stop_reason = "signal" if distributed.any_rank(self.ctx, signalled) else "budget_minutes"
                break
            if max_steps is not None and self.progress.step >= max_steps:
                stop_reason = "max_steps"
                break
        if stats is not None and metrics.get("step") != self.progress.step:
            # what is saved and reported is the last step, not the last logged one
            metrics = self._reduce(stats, window_tokens / max(1e-9, time.time() - window_start))
        return {**metrics, "stop_reason": stop_reason}

    def _fix_time_horizon(self, session_start: float, session_steps: int) -> None:
        """Time-budgeted runs: stretch the schedule over the tokens the rest of the budget will
        buy. First measured on this session's first steps (start-up included, so an estimate on
        the low side), then every HORIZON_UPDATE_STEPS from the speed since then; a budget raised on
        resume is honoured the same way. All ranks agree: rank 0's estimate is broadcast."""
        now = time.time()
        if self._probe is None:  # the first estimate
            self._probe = (now, self.progress.step)
            rate = self.tokens_per_step * session_steps / max(now - session_start, 1e-6)
        else:
            since, step = self._probe
            rate = self.tokens_per_step * (self.progress.step - step) / max(now - since, 1e-6)
        remaining = max(0.0, 60 * (self.cfg.train.budget_minutes - self.progress.minutes))
        estimate = torch.tensor([self.progress.tokens + rate * remaining], device=self.ctx.device)
        if self.ctx.enabled:
            torch.distributed.broadcast(estimate, src=0)
        self.progress.horizon_tokens = int(min(estimate.item(), self.epoch_tokens))

    def _reduce(self, stats: dict, tokens_per_s: float) -> dict:
        names = ["loss", "grad_norm", *GROUP_NAMES]
        values = torch.stack([torch.as_tensor(stats[n], dtype=torch.float32).to(self.ctx.device)
                              for n in names])
        values = distributed.all_mean(self.ctx, values).tolist()
        out = dict(zip(names, values))
        out.update(lr=stats["lr"], tokens_per_s=tokens_per_s,  # window_tokens counts the global batch
                   tokens=self.progress.tokens, step=self.progress.step, epoch=self.progress.epoch)
        return out


def train(cfg: TrainRunConfig, resume_dir: str | None = None, dataset_builder=None) -> dict:
    """Entry point of train.py: build data and model, fit, save; returns the final metrics. The run
    folder is locked while it is written (:mod:`trajectory.run_lock`): a second writer is refused."""
    from trajectory.models.cores import check_core_config

    check_core_config(cfg.model.core, cfg.model.core_options)  # before any data is built
    run_dir = train_run_dir(cfg, resume_dir)
    with run_lock(run_dir, "train.py") as lock:  # None on the ranks that trust rank 0's lock
        holds_lock = lock is not None
        checkpoint = None
        if resume_dir is not None:
            checkpoint = load_checkpoint(run_dir, with_trainer_state=True)
            check_resumable_changes(checkpoint.config, cfg)
            done = already_trained(cfg.train, Progress(**checkpoint.trainer_state["progress"]))
            if done is not None:  # said before any data is built; the checkpoint stays as it is
                if holds_lock:
                    print(f"{run_dir}: {done[1]}", flush=True)
                return {**checkpoint.metrics, "stop_reason": done[0]}
        else:
            from trajectory.training.advantage_weights import uses_own_critic
            prepare_fresh_run(run_dir, cfg.overwrite, clear=holds_lock,
                              keep_critic=uses_own_critic(cfg.train))
        return _train_in(run_dir, cfg, checkpoint, dataset_builder)


def weight_action_tokens(dataset, discretizer, layout, cfg: TrainRunConfig, run_dir: str,
                         report: bool) -> None:
    """Advantage-weighted action tokens of the training windows (held-out windows stay unweighted, so
    held-out losses compare across runs)."""
    from trajectory.training import advantage_weights
    path = advantage_weights.weighting_critic_path(cfg.train, run_dir)
    critic = advantage_weights.load_weighting_critic(path, cfg.data, run_dir)
    o, a = layout.obs_dim, layout.act_dim
    weights = advantage_weights.transition_weights(
        dataset.stream, dataset.valid, np.asarray(discretizer.centres), o, a, critic,
        cfg.train.advantage_beta, cfg.train.advantage_max_weight)
    dataset.weight_actions(weights, slice(o, o + a))
    if report:
        stats = advantage_weights.summary(weights[dataset.valid])
        print(f"action tokens weighted by {path}'s advantages (beta "
              f"{cfg.train.advantage_beta:g}): largest weight {stats['max']:.1f}, effective sample "
              f"share {stats['effective_share']:.2f}", flush=True)


def _train_in(run_dir: str, cfg: TrainRunConfig, checkpoint, dataset_builder) -> dict:
    from trajectory.data.dataset import Datasets, build_datasets

    ctx = distributed.setup(cfg.device)
    try:
        if cfg.device == "cpu" and "OMP_NUM_THREADS" not in os.environ and ctx.world_size > 1:
            torch.set_num_threads(1)
        build = dataset_builder or build_datasets
        if ctx.is_main:  # build or verify the token cache once, then the others read it
            built = build(cfg.data)
        distributed.barrier(ctx)
        if not ctx.is_main:
            built = build(cfg.data)
        if not isinstance(built, Datasets):  # a builder of (train, discretizer, info): no held-out
            built = Datasets(built[0], None, built[1], built[2])
        dataset, discretizer, info = built.train, built.discretizer, built.info
        layout = TokenLayout(info["obs_dim"], info["act_dim"], cfg.data.n_bins, cfg.data.seq_len)
        if cfg.train.advantage_beta > 0:
            weight_action_tokens(dataset, discretizer, layout, cfg, run_dir, ctx.is_main)
        trainer = Trainer(cfg, dataset, discretizer, layout, ctx, run_dir, _plain(info), built.held_out)
        if checkpoint is not None:
            trainer.restore(checkpoint)
        if ctx.is_main:
            # a checkpoint holds the weights and Adam's two moments, and an atomic save keeps the
            # previous one until the new one is complete: room for two, and the logs
            check_writable_folder(run_dir, 2 * 12 * trainer.model.num_parameters() + (8 << 20),
                                  f"the run folder {run_dir}", "choose another with runs_dir=<folder>")
            from omegaconf import OmegaConf
            save_text(OmegaConf.to_yaml(to_dict(cfg)), os.path.join(run_dir, "config.yaml"))
            print(f"run: {run_dir}  model: {trainer.model.num_parameters():,} parameters "
                  f"({cfg.model.core}), {len(dataset):,} windows, {ctx.world_size} process(es)")
        metrics = trainer.fit()
        if ctx.is_main:
            if metrics["stop_reason"] == "signal":
                saved_in = os.path.join(run_dir, CHECKPOINT_DIR)
                saved_in = os.path.join(run_dir, CHECKPOINT_DIR)
                print(stopped_note(trainer.stop_signal, metrics["step"], saved_in,
                                   f"python train.py --resume {run_dir}"), flush=True)
            print(json.dumps({k: metrics[k] for k in ("step", "loss", "tokens", "stop_reason")
                              if k in metrics}))
        # every rank done before any tears the group down: a rank destroying it while another still
        # talks to it can abort the process after a finished run (seen on a busy 2-core machine)
        distributed.barrier(ctx)
        return metrics
    finally:
        distributed.cleanup()


def already_trained(tc, progress: Progress) -> tuple[str, str] | None:
    """(stop reason, what to tell the user) when a resumed run has no budget left to train."""
    if tc.max_tokens and progress.tokens >= tc.max_tokens:
        return "max_tokens", (f"already trained {progress.tokens:,} tokens of its max_tokens="
                              f"{tc.max_tokens:,}: nothing to do (raise train.max_tokens to continue)")
    if tc.budget_minutes and progress.minutes >= tc.budget_minutes:
        return "budget_minutes", (f"already trained {progress.minutes:.3g} minutes of its budget_minutes="
                                  f"{tc.budget_minutes:g}: nothing to do (raise train.budget_minutes to "
                                  f"continue)")
    if progress.epoch >= tc.epochs:
        return "epochs", (f"already trained its {tc.epochs} epochs: nothing to do (raise train.epochs "
                          f"to continue)")
    return None


def check_resumable_changes(saved: TrainRunConfig, cfg: TrainRunConfig) -> None:
    """A resumed run may change budgets, logging and the like, not what its data, model or batch
    are: those would silently train a different run on the saved state."""
    old, new = to_dict(saved), to_dict(cfg)
    changed = [f"{section}.{key}" for section in ("data", "model")
               for key in sorted(set(old[section]) | set(new[section]))
               if old[section].get(key) != new[section].get(key)]
    changed += [f"train.{key}" for key in ("batch_size",) if old["train"][key] != new["train"][key]]
    if changed:
        raise ConfigError(f"cannot resume with a changed {', '.join(changed)} (the saved run was trained "
                          f"with the old value); start a new run with another name=... instead")


def prepare_fresh_run(run_dir: str, overwrite: bool, clear: bool = True, keep_critic: bool = False) -> None:
    """Refuse to train a new run into a folder that holds one (a checkpoint, or the folders a
    cut-off save left beside it), unless asked to replace it; then (where ``clear``: the process
    that holds the run's lock) remove everything the old run produced, its critic and evaluations
    included: a critic trained for another run must not rank this one's plans. ``keep_critic``: the
    new run weights its action tokens by that critic (trained for it first, and checked against its
    data before use), so it stays."""
    checkpoint = os.path.join(run_dir, CHECKPOINT_DIR)
    if os.path.isdir(checkpoint) or left_aside(checkpoint) is not None:
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a trained run: continue it with --resume "
                              f"{run_dir}, choose another name=..., or replace it with overwrite=true")
    if overwrite and clear:
        removed = clear_run_outputs(run_dir, keep=(CRITIC_DIR,) if keep_critic else ())
        if removed:
            print(f"overwrite=true: removed the previous run's {', '.join(removed)} from {run_dir}",
                  flush=True)


def _plain(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, list, dict))}
