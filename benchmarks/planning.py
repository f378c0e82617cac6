"""Planning cost per environment step for every core: shared-prefix step form, per-row step form,
and re-running the sequence.

At the halfcheetah defaults (25 envs, beam 32, 5 steps, 5 transitions of context, expand 2) on a
TT-sized model (4 layers, 128 wide; ``--size cpu``: the CPU configs' 2 layers, 64 wide; 10-transition
window, 100 bins) with random weights (cost does not depend on the weights), one planning call = one
env step. Three ways, in this process on the same inputs, so the ratios are side by side:

* ``shared``: the step form with each environment's context kept once for its beams (the default);
* ``plain``: the step form with every beam holding its own copy of the context (the reference);
* ``context only``: the context shared, but a beam's copies each copying what it decoded (the
  shared form before beams' copies shared their beam);
* ``recompute``: every new token re-runs the model on the whole sequence (how the original projects
  decoded; ``--baseline-repeats 0`` skips it);
* ``torch attention``: the shared form with torch's ops for the attention instead of the fused
  decode-attention kernel (``attention_kernel=torch``), for the cores whose plans call the kernel;
* ``compiled`` (``--compile``): the shared step form with the one-token step through
  ``torch.compile`` (``eval.py compile_step=true``), timed after the plans that compile it; the
  compilation's own seconds are reported beside it.

Each core is measured in a fresh process of its own (``--same-process`` measures them one after
another in this one): a core planned eagerly right after another core's compiled step was measured
40% slower than alone, so a row must not depend on which cores ran before it.

Each core's matrix-product FLOPs per plan are counted once (``torch.utils.flop_counter``, outside the
timed runs) and set against this machine's fp32 matmul throughput at the same thread count: the
fraction of that ceiling the shared step form reaches.

    python benchmarks/planning.py [--size tt|cpu] [--cores gpt,s5] [--envs 25] [--threads 2] [--compile] \\
        [--out benchmarks/results/planning_cpu.json] [--readme docs/planning.md]

Prints a table and writes benchmarks/results/planning.json (or ``--out``) and a bar chart beside it;
``--readme`` rewrites the block named after ``--out`` in docs/planning.md (``--replot`` redraws the
chart and that block from the JSON alone).
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
from cores import timed  # noqa: E402  (benchmarks/ is the script's folder)
from readme_blocks import markdown_table, replace_block

from planners.beam import (
    BeamPlanner,
    ContextSharingModel,
    PlainStateModel,
    RecomputingModel,
    max_context_transitions,
    random_context,
)
from planners.profiling import TT_LAYOUT, count_flops, matmul_ceiling, random_discretizer
from trajectory.config import EvalConfig, ModelConfig
from trajectory.io import save_json
from trajectory.models.cores import CORES
from trajectory.models.ops import decode_attention
from trajectory.models.ops.allocator import reuse_freed_memory
from trajectory.models.trajectory_model import TrajectoryModel

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LAYOUT = TT_LAYOUT
SIZES = {"tt": dict(d_model=128, n_layers=4, n_heads=4), "cpu": dict(d_model=64, n_layers=2, n_heads=4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tt")
    parser.add_argument("--cores", default=",".join(CORES))
    parser.add_argument("--envs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="also time the shared step form with the one-token step compiled")
    parser.add_argument("--out", default=os.path.join(RESULTS, "planning.json"))
    parser.add_argument("--replot", action="store_true", help="only redraw the chart of --out")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other cores' rows of --out (same size, envs and threads) and "
                             "replace only the cores measured now")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file (docs/planning.md) whose block named after --out "
                             "(planning_cpu.json: planning_cpu) to rewrite with its table")
    parser.add_argument("--same-process", action="store_true",
                        help="measure every core in this process instead of one fresh process each")
    args = parser.parse_args(argv)
    if args.replot:
        with open(args.out) as f:
            return publish(json.load(f), args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.same_process and len(args.cores.split(",")) > 1:
        return publish(measure_in_own_processes(args), args)
    reuse_freed_memory()  # as eval.py does
    cfg = EvalConfig(n_episodes=args.envs)
    disc = random_discretizer(LAYOUT)
    n_ctx = min(cfg.beam_context, max_context_transitions(LAYOUT, cfg.beam_steps))
    context = random_context(LAYOUT, cfg, args.envs)
    ceiling = matmul_ceiling(repeats=20)  # fp32 matmul FLOP/s at this thread count: the bar's yardstick
    print(f"matmul ceiling {ceiling / 1e9:.0f} GFLOP/s at {torch.get_num_threads()} threads", flush=True)
    results = previous_rows(args) if args.merge else {}
    for name in args.cores.split(","):
        torch.manual_seed(0)
        model = TrajectoryModel(ModelConfig(core=name, **SIZES[args.size]), LAYOUT).eval()

        def planner(adapter):
            return BeamPlanner(adapter, disc, LAYOUT, cfg, torch.Generator().manual_seed(0))
        kernel_calls = decode_attention.calls()
        shared = timed(lambda: planner(model).plan(context), args.repeats)
        uses_kernel = decode_attention.calls() > kernel_calls
        plain = timed(lambda: planner(PlainStateModel(model)).plan(context), args.repeats)
        context_only = timed(lambda: planner(ContextSharingModel(model)).plan(context), args.repeats)
        # Matrix-product FLOPs one plan executes (counted once, outside the timed runs).
        flops = count_flops(model, planner(model), context)["flops_per_env_step"]
        row = {"ms_per_env_step_cached": shared * 1e3, "ms_per_env_step_plain": plain * 1e3,
               "ms_per_env_step_context_only": context_only * 1e3,
               "shared_vs_plain": plain / shared, "ms_per_env_step_per_env_cached": shared * 1e3 / args.envs,
               "gflop_per_env_step": flops / 1e9, "ceiling_fraction": flops / shared / ceiling,
               "matmul_ceiling_gflops": ceiling / 1e9, "process": os.getpid()}
        line = (f"{name:7s} shared {shared * 1e3:9.1f} ms/env step   "
                f"context only {context_only * 1e3:9.1f} ms   plain {plain * 1e3:9.1f} ms  "
                f"x{plain / shared:4.2f}   {flops / 1e9:6.1f} GFLOP, {100 * flops / shared / ceiling:4.1f}% "
                f"of the ceiling")
        if uses_kernel:
            with decode_attention.kernel_mode("torch"):
                torch_attention = timed(lambda: planner(model).plan(context), args.repeats)
            row.update(ms_per_env_step_torch_attention=torch_attention * 1e3,
                       kernel_vs_torch_attention=torch_attention / shared)
            line += f"   torch attention {torch_attention * 1e3:9.1f} ms  x{torch_attention / shared:4.2f}"
        if args.compile:
            # Every core's compiled step is TrajectoryModel._step: one code object whose compiled
            # variants share dynamo's recompile limit, so start each core from an empty cache.
            torch._dynamo.reset()
            start = time.perf_counter()
            model.compile_step()
            for _ in range(2):  # the first plans compile (rows and lengths change once each)
                planner(model).plan(context)
            compile_seconds = time.perf_counter() - start - 2 * shared
            compiled = timed(lambda: planner(model).plan(context), args.repeats)
            row.update(ms_per_env_step_compiled=compiled * 1e3, compiled_vs_eager=shared / compiled,
                       compile_seconds=compile_seconds)
            line += (f"   compiled {compiled * 1e3:9.1f} ms  x{shared / compiled:4.2f} "
                     f"({compile_seconds:.0f} s to compile)")
        if args.baseline_repeats:
            naive = timed(lambda: planner(RecomputingModel(model)).plan(context), args.baseline_repeats)
            row.update(ms_per_env_step_recompute=naive * 1e3, speedup=naive / shared)
            line += f"   recompute {naive * 1e3:9.1f} ms  x{naive / shared:5.1f}"
        results[name] = row
        print(line, flush=True)
        # Saved after every core: a long run keeps what it measured.
        saved = save(args, cfg, n_ctx, results, ceiling)
    print(f"wrote {args.out}")
    return publish(saved, args)


def measure_in_own_processes(args) -> dict:
    """Every core of ``--cores`` measured by this script in a fresh process of its own (nothing a
    core leaves behind, such as compiled kernels or the allocator's cache, reaches the next), the
    rows gathered into ``--out``. Each row keeps the matmul ceiling its own process measured."""
    results = previous_rows(args) if args.merge else {}
    saved = None
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cores.split(","):
            out = os.path.join(folder, f"{name}.json")
            command = [sys.executable, os.path.abspath(__file__), "--same-process", "--cores", name,
                       "--size", args.size, "--envs", str(args.envs), "--repeats", str(args.repeats),
                       "--baseline-repeats", str(args.baseline_repeats),
                       "--threads", str(torch.get_num_threads()), "--out", out]
            if args.compile:
                command.append("--compile")
            subprocess.run(command, check=True)
            with open(out) as f:
                saved = json.load(f)
            results.update(saved["cores"])
            saved["cores"] = results
            save_json(saved, args.out)  # after every core: a long run keeps what it measured
    print(f"wrote {args.out}")
    return saved


def previous_rows(args) -> dict:
    """The rows of ``--out`` measured at the same size, envs and threads (for ``--merge``)."""
    if not os.path.exists(args.out):
        return {}
    with open(args.out) as f:
        saved = json.load(f)
    settings = saved["settings"]
    same = (settings.get("size", "tt"), settings["envs"], settings["threads"]) == (
        args.size, args.envs, torch.get_num_threads())
    if not same:
        raise SystemExit(f"--merge: {args.out} was measured at other settings ({settings}); "
                         f"rerun every core instead")
    return saved["cores"]


def publish(saved: dict, args) -> dict:
    """The chart beside ``--out`` and, with ``--readme``, the block named after it in that file."""
    plot(saved["cores"], saved["settings"]["envs"], args.out.replace(".json", ".png"),
         saved["settings"].get("size", "tt"))
    if args.readme:
        replace_block(args.readme, block_name(args.out), table(saved))
    return saved["cores"]


def plot(results: dict, envs: int, path: str, size: str = "tt") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    series = [("ms_per_env_step_recompute", "re-run the sequence per token", "#bbbbbb"),
              ("ms_per_env_step_plain", "step form, context copied per beam", "#9ecae1"),
              ("ms_per_env_step_context_only", "context shared, beams' tokens copied", "#6baed6"),
              ("ms_per_env_step_torch_attention", "shared, torch's attention (no fused kernel)", "#fdae6b"),
              ("ms_per_env_step_cached", "context and beams' tokens shared", "#1f77b4"),
              ("ms_per_env_step_compiled", "the same, step compiled", "#08306b")]
    series = [s for s in series if any(s[0] in results[n] for n in names)]  # a gap where a core lacks one
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for j, (key, label, color) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [results[n].get(key, float("nan")) / 1e3 for n in names], width, label=label, color=color)
        if key == "ms_per_env_step_cached" and all("ceiling_fraction" in results[n] for n in names):
            for x, n in zip(xs, names):  # the shared plan's share of the matmul ceiling
                ax.annotate(f"{100 * results[n]['ceiling_fraction']:.0f}%", (x, results[n][key] / 1e3),
                            xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(list(range(len(names))), names)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per env step")
    fractions = any("ceiling_fraction" in r for r in results.values())
    ax.set_title(f"beam-search planning, {envs} envs, {'TT size' if size == 'tt' else 'CPU size'}"
                 + (" (% over a bar: of the matmul ceiling)" if fractions else ""), fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def block_name(out: str) -> str:
    return os.path.splitext(os.path.basename(out))[0]


def table(saved: dict) -> str:
    """The docs table: seconds per env step with the shared prefix, the per-row reference, their
    ratio, and re-running the sequence where it was measured."""
    cores, settings = saved["cores"], saved["settings"]
    recompute = all("ms_per_env_step_recompute" in row for row in cores.values())
    plain = all("ms_per_env_step_plain" in row for row in cores.values())  # older files lack it
    columns = ["core", "shared, s / env step>" if plain else "step form, s / env step>"]
    torch_attention = any("ms_per_env_step_torch_attention" in row for row in cores.values())
    if torch_attention:  # only the cores whose plans call the fused kernel have it
        columns += ["torch attention, s>", "kernel saves>"]
    if plain:
        columns += ["context per beam, s>", "speed-up>"]
    context_only = all("ms_per_env_step_context_only" in row for row in cores.values())
    if context_only:
        columns += ["beams' tokens copied, s>", "sharing them saves>"]
    if recompute:
        columns += ["re-run per token, s>", "step form vs re-run>"]
    compiled = all("ms_per_env_step_compiled" in row for row in cores.values())
    if compiled:
        columns += ["step compiled, s>", "compiled vs eager>", "compiling, s>"]
    flops = all("ceiling_fraction" in row for row in cores.values())  # older files lack it
    if flops:
        columns += ["GFLOP / env step>", "of the matmul ceiling>"]
    rows = []
    for name, row in cores.items():
        cells = [name, f"{row['ms_per_env_step_cached'] / 1e3:.2f}"]
        if torch_attention:
            cells += ([f"{row['ms_per_env_step_torch_attention'] / 1e3:.2f}",
                       f"{row['kernel_vs_torch_attention']:.2f}x"]
                      if "ms_per_env_step_torch_attention" in row else ["-", "-"])
        if plain:
            cells += [f"{row['ms_per_env_step_plain'] / 1e3:.2f}", f"{row['shared_vs_plain']:.2f}x"]
        if context_only:
            ratio = row["ms_per_env_step_context_only"] / row["ms_per_env_step_cached"]
            cells += [f"{row['ms_per_env_step_context_only'] / 1e3:.2f}", f"{ratio:.2f}x"]
        if recompute:
            cells += [f"{row['ms_per_env_step_recompute'] / 1e3:.0f}", f"{row['speedup']:.0f}x"]
        if compiled:
            cells += [f"{row['ms_per_env_step_compiled'] / 1e3:.2f}", f"{row['compiled_vs_eager']:.2f}x",
                      f"{row['compile_seconds']:.0f}"]
        if flops:
            cells += [f"{row['gflop_per_env_step']:.1f}", f"{100 * row['ceiling_fraction']:.1f}%"]
        rows.append(cells)
    size = f"{settings.get('n_layers', 4)} layers x {settings.get('d_model', 128)} wide"
    note = (f"({size}, {settings['envs']} envs x beam "
            f"{settings['beam_width']} x expand {settings['sample_expand']}, {settings['threads']} threads, "
            f"torch {settings['torch']}")
    ceilings = [row["matmul_ceiling_gflops"] for row in cores.values() if "matmul_ceiling_gflops" in row]
    if len(ceilings) == len(cores) and round(min(ceilings)) != round(max(ceilings)):
        note += (f"; fp32 matmul ceiling {min(ceilings):.0f}-{max(ceilings):.0f} GFLOP/s, measured in "
                 f"each row's own run")
    elif "matmul_ceiling_gflops" in settings:
        note += f"; fp32 matmul ceiling {settings['matmul_ceiling_gflops']:.0f} GFLOP/s"
    note += ")"
    return markdown_table(columns, rows) + "\n\n" + note


def save(args, cfg: EvalConfig, n_ctx: int, results: dict, ceiling: float) -> dict:
    out = {"settings": {"envs": args.envs, "beam_width": cfg.beam_width, "beam_steps": cfg.beam_steps,
                        "context_transitions": n_ctx, "sample_expand": cfg.sample_expand,
                        "size": args.size, **SIZES[args.size], "vocab": LAYOUT.vocab,
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "matmul_ceiling_gflops": ceiling / 1e9,
                        "cpu": platform.processor() or platform.machine()},
           "cores": results}
    save_json(out, args.out)
    return out


if __name__ == "__main__":
    main()
