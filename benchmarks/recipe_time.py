"""How long a training recipe takes on this machine: its real training loop, timed after warm-up.

A token-budget recipe (``train.max_tokens``) trains the same model anywhere; this says what it
costs here. The loop is the trainer's own (data windows, forward, backward, AdamW), on the
recipe's dataset, for ``--steps`` steps after ``--warmup`` untimed ones.

    python benchmarks/recipe_time.py configs/cpu/halfcheetah_medium_s5_long.yaml \\
        configs/cpu/halfcheetah_medium_s5.yaml [--steps 60] [--threads 2]

Prints tokens/s and the hours the recipe's token budget takes; writes
benchmarks/results/recipe_time.json (one entry per config).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # appended: the root first would shadow the stdlib profile module
    sys.path.append(ROOT)
from readme_blocks import load_results, markdown_table, publish  # noqa: E402  (the script's folder)

from trajectory.config import TrainRunConfig  # noqa: E402
from trajectory.configutil import build_config  # noqa: E402
from trajectory.data.dataset import build_datasets  # noqa: E402
from trajectory.models.trajectory_model import TokenLayout  # noqa: E402
from trajectory.training import distributed  # noqa: E402
from trajectory.training.trainer import Trainer  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "recipe_time.json")


def measure(config: str, steps: int, warmup: int) -> dict:
    cfg = build_config(TrainRunConfig, config, [])
    built = build_datasets(cfg.data)
    info = built.info
    layout = TokenLayout(info["obs_dim"], info["act_dim"], cfg.data.n_bins, cfg.data.seq_len)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, built.train, built.discretizer, layout, distributed.DistContext(),
                          run_dir)
        batches = trainer.batches()
        for _ in range(warmup):
            trainer.train_step(next(batches))
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(batches))
        seconds = time.perf_counter() - start
    tokens_per_s = steps * trainer.tokens_per_step / seconds
    budget = cfg.train.max_tokens
    return {"config": os.path.relpath(config, ROOT), "batch_size": cfg.train.batch_size,
            "tokens_per_s": tokens_per_s, "max_tokens": budget,
            "hours_for_budget": budget / tokens_per_s / 3600 if budget else None,
            "budget_minutes": cfg.train.budget_minutes or None,
            "tokens_in_budget_minutes": (tokens_per_s * 60 * cfg.train.budget_minutes
                                         if cfg.train.budget_minutes else None)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readme", default=None, help="rewrite its recipe_time block with a table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = load_results(OUT)
    for config in args.configs:
        entry = {**measure(config, args.steps, args.warmup), "threads": args.threads,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "torch": torch.__version__}
        results[entry["config"]] = entry
        hours = f"{entry['hours_for_budget']:.2f} h for its {entry['max_tokens'] / 1e6:.0f}M tokens" \
            if entry["hours_for_budget"] else f"{entry['tokens_in_budget_minutes'] / 1e6:.0f}M tokens " \
            f"in its {entry['budget_minutes']:g} minutes"
        print(f"{entry['config']}: batch {entry['batch_size']}, {entry['tokens_per_s']:,.0f} tokens/s "
              f"-> {hours}")
    publish(results, OUT, args.readme, "recipe_time", table)
    return 0


def table(results: dict) -> str:
    rows = []
    for config, r in results.items():
        if r["hours_for_budget"]:
            budget, cost = f"{r['max_tokens'] / 1e6:.0f}M tokens", f"{r['hours_for_budget']:.2f} h"
        else:
            budget = f"{r['budget_minutes']:g} min"
            cost = f"{r['tokens_in_budget_minutes'] / 1e6:.0f}M tokens"
        rows.append([f"`{config}`", r["batch_size"], f"{r['tokens_per_s']:,.0f}", budget, cost])
    return markdown_table(["recipe", "batch>", "tokens/s (this machine)>", "budget", "time on this machine"],
                          rows)


if __name__ == "__main__":
    sys.exit(main())
