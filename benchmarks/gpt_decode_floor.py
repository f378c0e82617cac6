"""Where GPT's planning time goes: the plan with parts of its attention switched off, the bytes of
keys/values each part streams, and this machine's memory bandwidth, in one run.

One beam-search plan at the halfcheetah defaults (25 envs x beam 32 x expand 2, random weights) is
timed five ways in this process, side by side:

* ``full``: the step form with torch's attention (``attention_kernel=torch``);
* ``without attention``: the attention output replaced by its queries (keys/values are still
  written; nothing is read back): what the rest of the model and the planner cost;
* ``shared levels only``: each query attends to the shared levels (the environment's context and
  its beam's middle) but not to its row's own suffix;
* ``own suffix only``: the reverse;
* ``fused kernel``: the step form with the fused decode-attention kernel (``attention_kernel=auto``,
  when it builds here), the whole attention in one pass per row and head.

Alongside, the bytes of keys/values each part reads per plan (counted from the tensors the attention
is given) and the read bandwidth of a sum over a tensor far larger than the caches. The suffix's
bytes over that bandwidth is the time reading them takes at the least: the floor the per-row
suffixes put under a plan, whatever the arithmetic; all the bytes over it, the floor of any attention.

    python benchmarks/gpt_decode_floor.py [--size cpu|tt] [--threads 2] [--repeats 3]

Prints the table and writes benchmarks/results/gpt_decode_floor_<size>.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from cores import timed  # noqa: E402  (benchmarks/ is the script's folder)
from planning import SIZES

from planners.beam import BeamPlanner, random_context
from planners.profiling import TT_LAYOUT, random_discretizer
from trajectory.config import EvalConfig, ModelConfig
from trajectory.io import save_json
from trajectory.models.cores import gpt
from trajectory.models.ops import decode_attention
from trajectory.models.ops.allocator import reuse_freed_memory
from trajectory.models.trajectory_model import TrajectoryModel

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FULL = gpt.shared_prefix_attention


def read_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes per second a sum streams from memory (a tensor of ``megabytes``, best of ``repeats``)."""
    x = torch.ones(megabytes * 2 ** 20 // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


class Ablation:
    """A stand-in for ``shared_prefix_attention`` that can skip parts and counts the bytes read."""

    def __init__(self):
        self.mode, self.shared_bytes, self.suffix_bytes = "full", 0, 0

    def __call__(self, q, shared, suffix_k, suffix_v):
        self.shared_bytes += sum(2 * k.numel() * k.element_size() for k, _ in shared)
        self.suffix_bytes += 2 * suffix_k.numel() * suffix_k.element_size()
        if self.mode == "without attention":
            return q.clone()
        if self.mode == "own suffix only":
            shared = []
        elif self.mode == "shared levels only":  # the row's newest key alone stands in for its suffix
            suffix_k, suffix_v = suffix_k[:, :, -q.shape[2]:], suffix_v[:, :, -q.shape[2]:]
        return FULL(q, shared, suffix_k, suffix_v)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--envs", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as eval.py does
    out_path = args.out or os.path.join(RESULTS, f"gpt_decode_floor_{args.size}.json")
    cfg = EvalConfig(n_episodes=args.envs)
    context = random_context(TT_LAYOUT, cfg, args.envs)
    disc = random_discretizer(TT_LAYOUT)
    torch.manual_seed(0)
    model = TrajectoryModel(ModelConfig(core="gpt", **SIZES[args.size]), TT_LAYOUT).eval()
    ablation = Ablation()

    def plan():
        return BeamPlanner(model, disc, TT_LAYOUT, cfg, torch.Generator().manual_seed(0)).plan(context)
    gpt.shared_prefix_attention = ablation
    try:
        with decode_attention.kernel_mode("torch"):  # the ablations replace torch's attention
            plan()  # counts the bytes of one plan
            shared_bytes, suffix_bytes = ablation.shared_bytes, ablation.suffix_bytes
            seconds = {}
            for mode in ("full", "without attention", "shared levels only", "own suffix only"):
                ablation.mode = mode
                seconds[mode] = timed(plan, args.repeats)
                print(f"{mode:20s} {seconds[mode]:.3f} s / env step", flush=True)
    finally:
        gpt.shared_prefix_attention = FULL
    fused = None
    if decode_attention.attention_kernel() != "torch" and decode_attention.load() is not None:
        plan()  # the kernel's first calls
        fused = seconds["fused kernel"] = timed(plan, args.repeats)
        print(f"{'fused kernel':20s} {fused:.3f} s / env step", flush=True)
    bandwidth = read_bandwidth()
    floor = suffix_bytes / bandwidth
    result = {
        "settings": {"size": args.size, **SIZES[args.size], "envs": args.envs, "beam_width": cfg.beam_width,
                     "sample_expand": cfg.sample_expand, "beam_steps": cfg.beam_steps,
                     "threads": torch.get_num_threads(), "repeats": args.repeats,
                     "torch": torch.__version__, "machine": platform.machine()},
        "seconds_per_env_step": seconds,
        "attention_seconds": seconds["full"] - seconds["without attention"],
        "own_suffix_seconds": seconds["full"] - seconds["shared levels only"],
        "shared_levels_seconds": seconds["full"] - seconds["own suffix only"],
        "suffix_gb_per_env_step": suffix_bytes / 1e9, "shared_gb_per_env_step": shared_bytes / 1e9,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "suffix_read_floor_seconds": floor,
        "all_read_floor_seconds": (suffix_bytes + shared_bytes) / bandwidth,
        "fused_attention_seconds": None if fused is None else fused - seconds["without attention"],
        "attention_kernel": decode_attention.describe(),
    }
    print(f"attention {result['attention_seconds']:.3f} s of {seconds['full']:.3f}; own suffixes "
          f"{result['own_suffix_seconds']:.3f} s for {suffix_bytes / 1e9:.2f} GB of keys/values "
          f"(at {bandwidth / 1e9:.1f} GB/s read: {floor:.3f} s at the least); shared levels "
          f"{result['shared_levels_seconds']:.3f} s for {shared_bytes / 1e9:.2f} GB")
    if fused is not None:
        print(f"fused kernel: attention {result['fused_attention_seconds']:.3f} s (reading every "
              f"key/value once: {result['all_read_floor_seconds']:.3f} s at the least)")
    save_json(result, out_path)
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
