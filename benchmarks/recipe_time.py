"""How long a training recipe takes on this machine: its real training loop, timed after warm-up.

A token-budget recipe (``train.max_tokens``) trains the same model anywhere; this says what it
costs here. The loop is the trainer's own (data windows, forward, backward, AdamW), on the
recipe's dataset, for ``--steps`` steps after ``--warmup`` untimed ones (which also compile the
model with ``train.compile=true``).

    python benchmarks/recipe_time.py configs/cpu/halfcheetah_medium_s5_long.yaml \\
        configs/cpu/halfcheetah_medium_s5.yaml [--steps 60] [--threads 2]
    python benchmarks/recipe_time.py configs/cpu/halfcheetah_medium_s5.yaml --processes 2 --threads 1
    python benchmarks/recipe_time.py configs/cpu/halfcheetah_medium_s5.yaml --set train.compile=true
    ... [--readme docs/training.md]    # with the table of every saved setup

``--processes N`` runs the loop as N DDP processes (gloo, as ``torchrun --nproc_per_node=N
train.py`` trains), each with ``--threads`` torch threads; the global batch is the recipe's.
``--set key=value`` overrides the config as ``train.py`` would. Each setup is one entry of
benchmarks/results/recipe_time.json (its key names the config and the setup); tokens/s and the
hours the recipe's token budget takes (or the tokens its minutes buy) are printed and tabulated.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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


def measure(config: str, steps: int, warmup: int, overrides: list[str]) -> dict | None:
    """tokens/s of the trainer's loop in this process (a DDP rank when launched by torchrun); the
    entry on rank 0, None on the others."""
    cfg = build_config(TrainRunConfig, config, overrides)
    ctx = distributed.setup("cpu")
    try:
        built = build_datasets(cfg.data)  # the token cache exists: every rank only reads it
        info = built.info
        layout = TokenLayout(info["obs_dim"], info["act_dim"], cfg.data.n_bins, cfg.data.seq_len)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(cfg, built.train, built.discretizer, layout, ctx, run_dir)
            batches = trainer.batches()
            for _ in range(warmup):
                trainer.train_step(next(batches))
            distributed.barrier(ctx)
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(next(batches))
            distributed.barrier(ctx)
            seconds = time.perf_counter() - start
    finally:
        distributed.cleanup()
    if not ctx.is_main:
        return None
    tokens_per_s = steps * trainer.tokens_per_step / seconds  # the global batch's tokens
    budget = cfg.train.max_tokens
    return {"config": os.path.relpath(config, ROOT), "batch_size": cfg.train.batch_size,
            "processes": ctx.world_size, "compiled": bool(cfg.train.compile), "overrides": overrides,
            "tokens_per_s": tokens_per_s, "max_tokens": budget,
            "hours_for_budget": budget / tokens_per_s / 3600 if budget else None,
            "budget_minutes": cfg.train.budget_minutes or None,
            "tokens_in_budget_minutes": (tokens_per_s * 60 * cfg.train.budget_minutes
                                         if cfg.train.budget_minutes else None)}


def setup_key(entry: dict) -> str:
    """One results entry per config and setup (processes x threads, overrides)."""
    key = f"{entry['config']} [{entry.get('processes', 1)}x{entry['threads']}"
    return key + "".join(f", {o}" for o in entry.get("overrides", [])) + "]"


def in_processes(args, config: str) -> dict:
    """The measurement run by ``processes`` DDP ranks (torch's launcher), rank 0's entry back."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "entry.json")
        script = [os.path.abspath(__file__), config, "--steps", str(args.steps), "--warmup",
                  str(args.warmup), "--threads", str(args.threads), "--rank-out", out]
        for override in args.set:
            script += ["--set", override]
        status = distributed.launch(script, args.processes, args.threads)
        if status:
            raise subprocess.CalledProcessError(status, script)
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--processes", type=int, default=1, help="DDP processes (gloo)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, as train.py takes them (repeatable)")
    parser.add_argument("--rank-out", default=None, help=argparse.SUPPRESS)  # a DDP rank's entry
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'recipe_time' block to rewrite (docs/training.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rank_out:  # launched as one rank of in_processes()
        entry = measure(args.configs[0], args.steps, args.warmup, args.set)
        if entry is not None:
            with open(args.rank_out, "w") as f:
                json.dump(entry, f)
        return 0
    results = load_results(OUT)
    for config in args.configs:
        measured = (in_processes(args, config) if args.processes > 1
                    else measure(config, args.steps, args.warmup, args.set))
        entry = {**measured, "threads": args.threads,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "torch": torch.__version__}
        results[setup_key(entry)] = entry
        hours = f"{entry['hours_for_budget']:.2f} h for its {entry['max_tokens'] / 1e6:.0f}M tokens" \
            if entry["hours_for_budget"] else f"{entry['tokens_in_budget_minutes'] / 1e6:.0f}M tokens " \
            f"in its {entry['budget_minutes']:g} minutes"
        print(f"{setup_key(entry)}: batch {entry['batch_size']}, {entry['tokens_per_s']:,.0f} "
              f"tokens/s -> {hours}")
    publish(results, OUT, args.readme, "recipe_time", table)
    return 0


def table(results: dict) -> str:
    rows = []
    for r in results.values():
        if r["hours_for_budget"]:
            budget, cost = f"{r['max_tokens'] / 1e6:.0f}M tokens", f"{r['hours_for_budget']:.2f} h"
        else:
            budget = f"{r['budget_minutes']:g} min"
            cost = f"{r['tokens_in_budget_minutes'] / 1e6:.0f}M tokens"
        setup = f"{r.get('processes', 1)} x {r['threads']}"
        changes = ", ".join(f"`{o}`" for o in r.get("overrides", [])) or "none"
        rows.append([f"`{r['config']}`", r["batch_size"], setup, changes, f"{r['tokens_per_s']:,.0f}",
                     budget, cost])
    return markdown_table(["recipe", "batch>", "processes x threads", "overrides",
                           "tokens/s (this machine)>", "budget", "time on this machine"], rows)


if __name__ == "__main__":
    sys.exit(main())
