"""Data pipeline benchmark: build time and peak memory of the training windows, against baselines.

    python benchmarks/data_windows.py [--source halfcheetah-medium] [--cache-dir data]

Measured, each build in a fresh subprocess so that its peak RSS is its own:
  - cold build: Minari/HDF5 -> rows -> discretizer fit -> tokens -> cache write -> windows;
  - warm build: the same call when the token cache matches;
  - windows: our index build vs a naive per-window Python loop that materialises every padded
    window (as the TT dataset does per item), timed on a subset and extrapolated;
  - value-to-go: ours vs TT's per-timestep loop over a padded [episodes, max_len] array;
  - batches of 256 windows: one indexed fetch vs 256 single items + default_collate.
Results go to benchmarks/results/data_windows.json (no assertions on time).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "data_windows.json")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_build(source: str, cache_dir: str) -> dict:
    """One build_dataset call; runs in a child process (see main)."""
    start_rss = peak_rss_mb()
    from trajectory.config import DataConfig
    from trajectory.data.dataset import build_dataset

    import_rss = peak_rss_mb()
    start = time.perf_counter()
    dataset, _, info = build_dataset(DataConfig(source=source, cache_dir=cache_dir))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_after_imports_mb": round(import_rss, 1), "rss_at_start_mb": round(start_rss, 1),
            "cache_hit": info["cache_hit"], "n_windows": len(dataset), "info": info}


def child(phase: str, source: str, cache_dir: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--phase", phase, "--source",
                          source, "--cache-dir", cache_dir], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{phase} build failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def naive_windows(tokens: np.ndarray, lengths: np.ndarray, seq_len: int,
                  limit: int) -> tuple[int, float]:
    """Baseline: one Python iteration per window, each padded window copied out (first ``limit``)."""
    start, count, offset = time.perf_counter(), 0, 0
    windows, masks = [], []
    for length in lengths:
        episode = tokens[offset:offset + length]
        for t in range(length):
            real = episode[t:t + seq_len]
            pad = np.zeros((seq_len - len(real), tokens.shape[1]), dtype=np.uint8)
            windows.append(np.concatenate([real, pad]).reshape(-1))
            masks.append(np.repeat(np.arange(seq_len) < len(real), tokens.shape[1]))
            count += 1
            if count == limit:
                return count, time.perf_counter() - start
        offset += length
    return count, time.perf_counter() - start


def tt_values(rewards: np.ndarray, lengths: np.ndarray, discount: float) -> np.ndarray:
    """Baseline: TT's value loop over episodes padded to the longest one."""
    max_len = int(lengths.max())
    padded = np.zeros((len(lengths), max_len))
    ends = np.cumsum(lengths)
    for e, (end, length) in enumerate(zip(ends, lengths)):
        padded[e, :length] = rewards[end - length:end]
    discounts = discount ** np.arange(max_len)
    values = np.zeros_like(padded)
    for t in range(max_len):
        values[:, t] = (padded[:, t + 1:] * discounts[:max_len - t - 1]).sum(axis=1)
    return np.concatenate([values[e, :length] for e, length in enumerate(lengths)])


def in_process(source: str, cache_dir: str) -> dict:
    import torch

    from trajectory.config import DataConfig
    from trajectory.data.dataset import (
        WindowDataset,
        build_dataset,
        tokenized,
        value_to_go,
    )
    from trajectory.data.sources import load_transitions

    cfg = DataConfig(source=source, cache_dir=cache_dir)
    dataset, _, _ = build_dataset(cfg)  # warm by now
    data, _ = tokenized(cfg)
    tokens, lengths = data.tokens, data.lengths  # [N, D], [E]
    start = time.perf_counter()
    WindowDataset(tokens, lengths, cfg.seq_len)
    ours = time.perf_counter() - start
    limit = 50_000
    count, naive = naive_windows(tokens, lengths, cfg.seq_len, limit)
    naive_full = naive * len(tokens) / count
    windows = {"ours_s": round(ours, 4), "naive_subset_windows": count,
               "naive_subset_s": round(naive, 3), "naive_extrapolated_s": round(naive_full, 2),
               "naive_materialised_mb": round(len(tokens) * cfg.seq_len * tokens.shape[1]
                                              * 2 / 2**20, 1),  # uint8 tokens + bool mask
               "speedup": round(naive_full / ours, 1)}

    tr = load_transitions(source, cache_dir=cache_dir)
    starts, lens = tr.episode_bounds()
    rewards = tr.rewards.astype(np.float64)
    start = time.perf_counter()
    v_ours = value_to_go(rewards, starts, lens, cfg.discount)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    v_tt = tt_values(rewards, lens, cfg.discount)
    t_tt = time.perf_counter() - start
    values = {"ours_s": round(t_ours, 3), "tt_loop_s": round(t_tt, 3),
              "speedup": round(t_tt / t_ours, 1), "max_abs_diff": float(np.abs(v_ours - v_tt).max())}

    rng = np.random.default_rng(0)
    index = [rng.integers(0, len(dataset), 256) for _ in range(20)]
    start = time.perf_counter()
    for idx in index:
        dataset[idx]
    batched = (time.perf_counter() - start) / len(index)
    start = time.perf_counter()
    for idx in index:
        torch.utils.data.default_collate([dataset[int(i)] for i in idx])
    single = (time.perf_counter() - start) / len(index)
    fetch = {"batch_size": 256, "indexed_ms": round(1e3 * batched, 2),
             "items_plus_collate_ms": round(1e3 * single, 2), "speedup": round(single / batched, 1)}
    return {"windows": windows, "value_to_go": values, "fetch": fetch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="halfcheetah-medium")
    parser.add_argument("--cache-dir", default="data")
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)  # child process role
    args = parser.parse_args()
    if args.phase == "build":
        print(json.dumps(run_build(args.source, args.cache_dir)))
        return
    cache_dir = os.path.abspath(args.cache_dir)
    with tempfile.TemporaryDirectory() as fresh:
        # a token cache that is empty, next to the same Minari datasets: a truly cold build
        if os.path.isdir(os.path.join(cache_dir, "minari")):
            os.symlink(os.path.join(cache_dir, "minari"), os.path.join(fresh, "minari"))
        source = os.path.abspath(args.source) if os.path.isfile(args.source) else args.source
        cold = child("build", source, fresh)
        warm = child("build", source, fresh)
        compare = in_process(source, fresh)
    info = cold.pop("info")
    warm.pop("info")
    result = {"benchmark": "data_windows", "source": args.source,
              "n_transitions": info["n_transitions"], "n_windows": info["n_windows"],
              "seq_len": info["seq_len"], "transition_dim": info["transition_dim"],
              "cold_build": cold, "warm_build": warm, **compare,
              "behaviour": {k: info[k] for k in ("return_mean", "return_std", "return_count",
                                                 "normalized_mean")},
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "processor": platform.processor() or platform.machine()}}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(RESULTS + ".tmp", RESULTS)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
