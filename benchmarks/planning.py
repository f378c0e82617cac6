"""Planning cost per environment step for every core: cached step form vs re-running the sequence.

At the halfcheetah defaults (25 envs, beam 32, 5 steps, 5 transitions of context, expand 2) on a
TT-sized model (4 layers, 128 wide, 10-transition window, 100 bins) with random weights (cost does
not depend on the weights), one planning call = one env step. The baseline is the way the original
projects decoded: every new token re-runs the model on the whole sequence so far. Both run in this
process, on the same inputs, so the ratio is measured side by side.

    python benchmarks/planning.py [--cores gpt,s5] [--envs 25] [--repeats 2] [--threads 2]

Prints a table and writes benchmarks/results/planning.json and a bar chart beside it
(``--replot`` redraws the chart from the JSON alone).
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import torch
from cores import timed  # noqa: E402  (benchmarks/ is the script's folder)

from planners.beam import BeamPlanner, RecomputingModel, max_context_transitions, random_context
from trajectory.config import EvalConfig, ModelConfig
from trajectory.io import save_json
from trajectory.models.cores import CORES
from trajectory.models.trajectory_model import TrajectoryModel
from trajectory.profiling import TT_LAYOUT, random_discretizer

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LAYOUT = TT_LAYOUT


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", default=",".join(CORES))
    parser.add_argument("--envs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS, "planning.json"))
    parser.add_argument("--replot", action="store_true", help="only redraw the chart of --out")
    args = parser.parse_args(argv)
    if args.replot:
        with open(args.out) as f:
            saved = json.load(f)
        plot(saved["cores"], saved["settings"]["envs"], args.out.replace(".json", ".png"))
        return saved["cores"]
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EvalConfig(n_episodes=args.envs)
    disc = random_discretizer(LAYOUT)
    n_ctx = min(cfg.beam_context, max_context_transitions(LAYOUT, cfg.beam_steps))
    context = random_context(LAYOUT, cfg, args.envs)
    results = {}
    for name in args.cores.split(","):
        torch.manual_seed(0)
        model = TrajectoryModel(ModelConfig(core=name), LAYOUT).eval()
        cached_planner = BeamPlanner(model, disc, LAYOUT, cfg, torch.Generator().manual_seed(0))
        naive_planner = BeamPlanner(RecomputingModel(model), disc, LAYOUT, cfg,
                                    torch.Generator().manual_seed(0))
        cached = timed(lambda: cached_planner.plan(context), args.repeats)
        naive = timed(lambda: naive_planner.plan(context), args.baseline_repeats)
        results[name] = {"ms_per_env_step_cached": cached * 1e3, "ms_per_env_step_recompute": naive * 1e3,
                         "speedup": naive / cached,
                         "ms_per_env_step_per_env_cached": cached * 1e3 / args.envs}
        print(f"{name:7s} cached {cached * 1e3:9.1f} ms/env step   recompute {naive * 1e3:9.1f} ms   "
              f"x{naive / cached:5.1f}", flush=True)
        save(args, cfg, n_ctx, results)  # after every core: a long run keeps what it measured
    plot(results, args.envs, args.out.replace(".json", ".png"))
    print(f"wrote {args.out}")
    return results


def plot(results: dict, envs: int, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    cached = [results[n]["ms_per_env_step_cached"] / 1e3 for n in names]
    rerun = [results[n]["ms_per_env_step_recompute"] / 1e3 for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], rerun, 0.4, label="re-run the sequence per token", color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], cached, 0.4, label="step form with cache/state", color="#1f77b4")
    for i, name in enumerate(names):
        ax.annotate(f"{results[name]['speedup']:.0f}x", (i, rerun[i]), ha="center", va="bottom")
    ax.set_xticks(list(x), names)
    ax.set_yscale("log")
    ax.set_ylim(min(cached) / 2, max(rerun) * 3)
    ax.set_ylabel("seconds per env step")
    ax.set_title(f"beam-search planning, {envs} envs, TT size, 2 CPU cores")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save(args, cfg: EvalConfig, n_ctx: int, results: dict) -> None:
    out = {"settings": {"envs": args.envs, "beam_width": cfg.beam_width, "beam_steps": cfg.beam_steps,
                        "context_transitions": n_ctx, "sample_expand": cfg.sample_expand,
                        "d_model": 128, "n_layers": 4, "vocab": LAYOUT.vocab,
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "cpu": platform.processor() or platform.machine()},
           "cores": results}
    save_json(out, args.out)


if __name__ == "__main__":
    main()
