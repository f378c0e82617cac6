"""Core throughput and decoding latency, each core against the naive decoding of the original projects.

For every registered core at the Trajectory Transformer's size (4 layers, 128 wide, 250-token window):

* training tokens/s (forward + backward) on [batch, 250] windows;
* planning decode latency per token at batch 1,600 (25 envs x 32 beams x 2 expansions) after 125
  tokens of context, with the core's cached step form, against the naive way (re-running the whole
  context through the parallel form for every new token), measured side by side in this run.

    python benchmarks/cores.py [--batch 1600] [--context 125] [--cores gpt,s5] [--threads 2]

Prints a table and writes benchmarks/results/cores.json; ``python benchmarks/tables.py
benchmarks/results/cores.json --readme README.md`` then rewrites the README's cores table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from trajectory.models.cores import CORES, CoreConfig, build_core

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def train_tokens_per_s(core, batch: int, length: int, d: int, repeats: int) -> float:
    core.train()
    x = torch.randn(batch, length, d, requires_grad=True)

    def step():
        core(x).pow(2).mean().backward()
    return batch * length / timed(step, repeats)


@torch.no_grad()
def decode_latency(core, batch: int, context: int, d: int, new_tokens: int, naive_tokens: int):
    """Seconds per decoded token: cached step form vs re-running the parallel form."""
    core.eval()
    prefix = torch.randn(batch, context, d)
    new = torch.randn(batch, new_tokens, d)
    state = core.init_state(batch, "cpu", torch.float32)
    _, state = core.step(prefix, state)
    prefilled = state

    def cached():
        s = prefilled
        for t in range(new_tokens):
            _, s = core.step(new[:, t:t + 1], s)
    cached_s = timed(cached, 2) / new_tokens

    def naive():
        seq = prefix
        for t in range(naive_tokens):
            seq = torch.cat([seq, new[:, t:t + 1]], dim=1)
            core(seq)
    naive_s = timed(naive, 1) / naive_tokens
    return cached_s, naive_s


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", default=",".join(CORES))
    parser.add_argument("--batch", type=int, default=1600)
    parser.add_argument("--context", type=int, default=125)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS, "cores.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CoreConfig(d_model=128, n_layers=4, n_heads=4, max_len=250, dropout=0.0)
    rows = {}
    for name in args.cores.split(","):
        torch.manual_seed(0)
        core = build_core(name, cfg)
        tps = train_tokens_per_s(core, args.train_batch, cfg.max_len, cfg.d_model, repeats=3)
        cached, naive = decode_latency(core, args.batch, args.context, cfg.d_model,
                                       new_tokens=10, naive_tokens=2)
        rows[name] = {"params": sum(p.numel() for p in core.parameters()),
                      "train_tokens_per_s": round(tps), "decode_ms_per_token_cached": cached * 1e3,
                      "decode_ms_per_token_naive": naive * 1e3, "speedup_cached_vs_naive": naive / cached}
        print(f"{name:7s} train {tps:9,.0f} tok/s | decode per token: cached {cached * 1e3:8.1f} ms, "
              f"naive {naive * 1e3:8.1f} ms, x{naive / cached:5.1f}", flush=True)
    result = {"settings": {"d_model": 128, "n_layers": 4, "window": 250, "decode_batch": args.batch,
                           "context": args.context, "train_batch": args.train_batch,
                           "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "cpu": platform.processor() or platform.machine()},
              "cores": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
