"""The training loop behind ``python -m experiments.lm.train`` (see that module)."""
from __future__ import annotations

import json
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from experiments.lm.catalog import LM_CORE_CATALOG
from experiments.lm.checkpoint import resumable_config, save_lm_checkpoint
from experiments.lm.config import LMRunConfig
from experiments.lm.dataset import TokenData, evaluate, prepare_data, train_batch
from experiments.lm.model import LanguageModel
from trajectory.checkpoint import load_torch_file, restore_weights, trainer_state_file
from trajectory.checkpoint_folder import checkpoint_dir
from trajectory.configutil import ConfigError
from trajectory.models.cores import check_core_config
from trajectory.training import distributed
from trajectory.training.monitor import TrainLogger
from trajectory.training.optim import lr_at, make_optimizer
from trajectory.training.trainer import rng_state, seed_everything, set_rng_state


def default_run_name(cfg: LMRunConfig, corpus: str) -> str:
    core = cfg.model.core
    if core == "simple_rnn":
        core += "-" + str(cfg.model.core_options.get("variant", "scan"))
    return f"{corpus}-{cfg.data.tokenizer}-{core}"


class LMTrainer:
    """One optimisation loop for every core; ``fit`` returns the final metrics."""

    def __init__(self, cfg: LMRunConfig, data: TokenData, ctx: distributed.DistContext, run_dir: str):
        self.cfg, self.data, self.ctx, self.run_dir = cfg, data, ctx, run_dir
        tc = cfg.train
        if tc.batch_size % ctx.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the number of "
                              f"processes ({ctx.world_size})")
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = LanguageModel(cfg.model, data.tokenizer.vocab_size, cfg.data.seq_len).to(ctx.device)
        self.optimizer = make_optimizer(self.model, tc, ctx.device)
        # The forward must go through the DDP wrapper, or gradients are never all-reduced.
        self.forward_model = (DistributedDataParallel(self.model, device_ids=[ctx.device.index]
                                                      if ctx.device.type == "cuda" else None)
                              if ctx.enabled else self.model)
        self.tokens_per_step = tc.batch_size * cfg.data.seq_len
        self.horizon = tc.max_steps * self.tokens_per_step
        self.step = 0
        self.minutes = 0.0  # training time of the whole run, across resumes (what budgets count)
        self.history: list[dict] = []

    def train_step(self) -> dict[str, float]:
        cfg, tc = self.cfg, self.cfg.train
        x, y = train_batch(self.data, self.step, cfg.seed, cfg.data.seq_len, tc.batch_size, self.ctx)
        lr = lr_at(self.step * self.tokens_per_step, tc, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.model.loss(self.forward_model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), "lr": lr}

    def evaluate(self, split: str = "val") -> dict[str, float]:
        tc = self.cfg.train
        return evaluate(self.model, self.data.splits[split], self.data.tokenizer, self.cfg.data.seq_len,
                        tc.eval_tokens, max(1, tc.batch_size // self.ctx.world_size), self.ctx)

    def trainer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "step": self.step, "horizon": self.horizon,
                "history": self.history, "rng": rng_state(), "minutes": self.minutes}

    def restore(self, model_state: dict, state: dict) -> None:
        restore_weights(self.model, self.optimizer, model_state, state["optimizer"])
        self.step, self.history = state["step"], list(state["history"])
        self.horizon = state["horizon"]  # the schedule keeps the length it started with
        self.minutes = state.get("minutes", 0.0)  # older checkpoints did not count it
        set_rng_state(state["rng"])

    def save(self, metrics: dict) -> None:
        if self.ctx.is_main:
            save_lm_checkpoint(self.run_dir, self.cfg, self.model, self.data.tokenizer,
                               {**metrics, "history": self.history, "plays": self.data.plays},
                               self.trainer_state())

    def _record_eval(self, logger: TrainLogger, train_loss: float, elapsed: float) -> dict:
        val = self.evaluate("val")
        logger.log_scalars(self.step, {k: val[k] for k in ("loss", "bpc", "perplexity")}, prefix="val")
        row = {"step": self.step, "tokens": self.step * self.tokens_per_step, "train_loss": train_loss,
               "val_loss": val["loss"], "val_bpc": val["bpc"], "val_perplexity": val["perplexity"],
               "minutes": elapsed / 60}
        self.history.append(row)
        return row

    def fit(self, final_test: bool = True) -> dict:
        tc = self.cfg.train
        logger = TrainLogger(self.run_dir, self.ctx.is_main, tc.max_steps)
        start = window_start = time.time()
        minutes_before = self.minutes
        train_loss, metrics, stop = float("nan"), {}, "max_steps"
        self.model.train()
        while self.step < tc.max_steps:
            stats = self.train_step()
            if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                reduced = distributed.all_mean(self.ctx, torch.stack([stats["loss"], stats["grad_norm"]]))
                train_loss = reduced[0].item()
                tok_s = tc.log_every * self.tokens_per_step / max(1e-9, time.time() - window_start)
                logger.log_scalars(self.step, {"loss": train_loss, "grad_norm": reduced[1].item(),
                                               "lr": stats["lr"], "tokens_per_s": tok_s}, prefix="train")
                logger.postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}")
                window_start = time.time()
            logger.advance(self.step, stats["loss"])
            self.minutes = minutes_before + (time.time() - start) / 60
            over = bool(tc.budget_minutes) and self.minutes >= tc.budget_minutes  # the whole run's
            if tc.budget_minutes and distributed.any_rank(self.ctx, over):
                stop = "budget_minutes"
                break
            if tc.eval_every and self.step % tc.eval_every == 0 and self.step < tc.max_steps:
                metrics = self._record_eval(logger, train_loss, time.time() - start)
                logger.postfix(loss=f"{train_loss:.3f}", val_bpc=f"{metrics['val_bpc']:.3f}")
                self.save(metrics)
        elapsed = time.time() - start
        if not self.history or self.history[-1]["step"] != self.step:
            metrics = self._record_eval(logger, train_loss, elapsed)
        metrics = {**self.history[-1], "stop_reason": stop, "train_seconds": elapsed,
                   "tokens_per_s": self.step * self.tokens_per_step / max(elapsed, 1e-9),
                   "parameters": self.model.num_parameters(), "world_size": self.ctx.world_size}
        if final_test:
            test = self.evaluate("test")
            metrics.update(test_loss=test["loss"], test_bpc=test["bpc"], test_perplexity=test["perplexity"])
        self.save(metrics)
        logger.close()
        distributed.barrier(self.ctx)  # ranks leave together (rank 0 may still be writing)
        return metrics


def set_threads(threads: int, ctx: distributed.DistContext) -> None:
    if threads:
        torch.set_num_threads(threads)
    elif ctx.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def train(cfg: LMRunConfig, resume_dir: str | None = None) -> dict:
    check_core_config(cfg.model.core, cfg.model.core_options, catalog=LM_CORE_CATALOG)  # before any data
    resumed = None
    if resume_dir is not None:
        from experiments.lm.checkpoint import load_lm_checkpoint
        resumed = (load_lm_checkpoint(resume_dir).model.state_dict(),
                   load_torch_file(trainer_state_file(resumable_config(resume_dir))))
    ctx = distributed.setup(cfg.device)
    try:
        set_threads(cfg.threads, ctx)
        data = prepare_data(cfg.data)  # deterministic: every rank builds the same tokenizer
        run_dir = (os.path.dirname(checkpoint_dir(resume_dir).rstrip("/")) if resume_dir else
                   os.path.join(cfg.runs_dir, cfg.name or default_run_name(cfg, data.corpus)))
        trainer = LMTrainer(cfg, data, ctx, run_dir)
        if resumed is not None:
            trainer.restore(*resumed)
        if ctx.is_main:
            sizes = ", ".join(f"{s} {len(t):,}" for s, t in data.splits.items())
            print(f"run: {run_dir}  model: {trainer.model.num_parameters():,} parameters "
                  f"({cfg.model.core}), vocab {data.tokenizer.vocab_size} ({cfg.data.tokenizer}), "
                  f"tokens: {sizes}, {ctx.world_size} process(es)")
        metrics = trainer.fit()
        if ctx.is_main:
            keys = ("step", "train_loss", "val_loss", "val_bpc", "test_bpc", "stop_reason")
            print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
        return metrics
    finally:
        distributed.cleanup()
