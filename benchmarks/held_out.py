"""Held-out metrics of checkpoints, for the raw and the averaged (EMA) weights side by side.

Windows of the episodes every run held out (``data.holdout_fraction``), teacher-forced: cross-entropy
per token group, next-observation and reward errors in real units, value calibration (see
``trajectory/training/held_out.py``).

    python benchmarks/held_out.py runs/s5-30m [runs/other ...] [--windows 2048] [--readme docs/results.md]
    python benchmarks/held_out.py table --readme docs/results.md    # the saved results again

Prints a table and writes benchmarks/results/held_out.json (one entry per run and weights).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # appended: the root first would shadow the stdlib profile module
    sys.path.append(ROOT)
from readme_blocks import load_results, markdown_table, publish  # noqa: E402  (the script's folder)

from trajectory.checkpoint import load_checkpoint  # noqa: E402
from trajectory.data.dataset import build_datasets  # noqa: E402
from trajectory.training.held_out import HeldOutMetrics  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "held_out.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders, or 'table' to reprint the saved results")
    parser.add_argument("--windows", type=int, default=2048)
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'held_out' block to rewrite (docs/results.md)")
    args = parser.parse_args(argv)
    results = load_results(OUT)
    for run in args.runs if args.runs != ["table"] else []:
        checkpoint = load_checkpoint(run)
        built = build_datasets(checkpoint.config.data)
        if built.held_out is None:
            raise SystemExit(f"error: {run} was trained without held-out episodes "
                             f"(data.holdout_fraction=0)")
        # a run trained before episodes were held out saw these windows: say so beside its numbers
        truly_held_out = "held_out_episodes" in checkpoint.metrics.get("data", {})
        metrics = HeldOutMetrics(built.held_out, built.discretizer, checkpoint.layout,
                                 n_windows=args.windows)
        for weights in ("raw", "ema"):
            if weights == "ema" and checkpoint.ema_state is None:
                continue
            with torch.no_grad():
                values = metrics(checkpoint.build_model("cpu", weights), torch.device("cpu"))
            key = f"{os.path.basename(os.path.normpath(run))}:{weights}"
            results[key] = {"run": run, "weights": weights, "tokens": checkpoint.metrics.get("tokens"),
                            "windows": len(metrics.index),
                            "trained_on_these_episodes": not truly_held_out, **values}
            print(f"{key:>36}  CE obs {values['ce_obs']:.3f} act {values['ce_act']:.3f} reward "
                  f"{values['ce_reward']:.3f} value {values['ce_value']:.3f}  obs MAE "
                  f"{values['obs_mae']:.3f} reward MAE {values['reward_mae']:.3f}  value corr "
                  f"{values['value_corr']:.2f} spread {values['value_spread_ratio']:.2f}")
    publish(results, OUT, args.readme, "held_out", table)
    return 0


def table(results: dict) -> str:
    columns = ["run", "weights", "tokens>", "CE obs>", "CE act>", "CE reward>", "CE value>", "obs MAE>",
               "reward MAE>", "value corr>", "value spread ratio>"]
    rows = []
    for key, r in results.items():
        seen = " (trained on them)" if r.get("trained_on_these_episodes") else ""
        rows.append([f"{key.split(':')[0]}{seen}", r["weights"], f"{r['tokens'] / 1e6:.0f}M",
                     *(f"{r[k]:.3f}" for k in ("ce_obs", "ce_act", "ce_reward", "ce_value", "obs_mae",
                                               "reward_mae")),
                     f"{r['value_corr']:.2f}", f"{r['value_spread_ratio']:.2f}"])
    return markdown_table(columns, rows)


if __name__ == "__main__":
    sys.exit(main())
