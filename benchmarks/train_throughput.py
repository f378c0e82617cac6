"""Training throughput (tokens/s: forward, backward, AdamW step) of every core at the paper and CPU sizes.

Sizes come from the shipped configs (configs/medium/*.yaml and configs/cpu/*.yaml) with the
halfcheetah token layout (17 + 6 + 2 dims, 100 bins). On CUDA every combination of bf16 autocast
and torch.compile is measured too; the ratios against the fp32 eager run of the same core and size
come from this same process.

    python benchmarks/train_throughput.py [--device cuda] [--cores gpt,s5] [--sizes medium,cpu]

Writes benchmarks/results/train_throughput_<device>.json; ``python benchmarks/tables.py
benchmarks/results/train_throughput_<device>.json --readme docs/training.md`` then rewrites its table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from trajectory.config import TrainRunConfig
from trajectory.configutil import build_config
from trajectory.models.cores import CORES
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel
from trajectory.training.optim import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def measure(cfg: TrainRunConfig, device: torch.device, bf16: bool, compile_model: bool,
            seconds: float, batch_size: int | None) -> dict:
    layout = TokenLayout(17, 6, cfg.data.n_bins, cfg.data.seq_len)
    torch.manual_seed(0)
    model = TrajectoryModel(cfg.model, layout).to(device).train()
    optimizer = make_optimizer(model, cfg.train, device)
    forward = torch.compile(model) if compile_model else model
    batch = batch_size or cfg.train.batch_size
    x = torch.randint(0, layout.vocab, (batch, layout.max_tokens - 1), device=device)
    y = torch.randint(0, layout.vocab, (batch, layout.max_tokens - 1), device=device)
    mask = torch.ones(batch, layout.max_tokens - 1, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        with autocast:
            logits = forward(x)
        loss, _ = model.loss(logits, y, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    warm_start = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    sync()
    warmup = time.perf_counter() - warm_start
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 2:
        step()
        steps += 1
        if device.type == "cuda" and steps % 5 == 0:
            sync()
    sync()
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": batch * (layout.max_tokens - 1) * steps / elapsed,
            "ms_per_step": 1e3 * elapsed / steps, "batch": batch, "window_tokens": layout.max_tokens,
            "params": model.num_parameters(), "warmup_s": warmup,
            "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", default=",".join(CORES))
    parser.add_argument("--sizes", default="medium,cpu")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cpu-batch", type=int, default=16, help="batch for paper sizes on CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    variants = [(False, False)]
    if device.type == "cuda":
        variants = [(False, False), (True, False)]
        if not args.no_compile:
            variants += [(False, True), (True, True)]
    rows = []
    for size in args.sizes.split(","):
        for core in args.cores.split(","):
            path = os.path.join(ROOT, f"configs/{size}/halfcheetah_medium_{core}.yaml")
            cfg = build_config(TrainRunConfig, path)
            cfg.model.dropout = cfg.model.embedding_dropout = 0.0
            batch = args.cpu_batch if device.type == "cpu" and size == "medium" else None
            base = None
            for bf16, compiled in variants:
                try:
                    result = measure(cfg, device, bf16, compiled, args.seconds, batch)
                except Exception as err:  # e.g. a core that torch.compile cannot trace
                    rows.append({"size": size, "core": core, "bf16": bf16, "compile": compiled,
                                 "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
                    print(f"{size} {core} bf16={bf16} compile={compiled}: {rows[-1]['error']}")
                    continue
                base = base or result["tokens_per_s"]
                row = {"size": size, "core": core, "bf16": bf16, "compile": compiled, **result,
                       "ratio_vs_fp32_eager": result["tokens_per_s"] / base}
                rows.append(row)
                print(f"{size:6s} {core:6s} bf16={bf16!s:5s} compile={compiled!s:5s} "
                      f"{result['tokens_per_s']:12,.0f} tok/s  x{row['ratio_vs_fp32_eager']:.2f}  "
                      f"({result['params']:,} params, batch {result['batch']})", flush=True)
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
           or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "rows": rows}
    path = args.out or os.path.join(RESULTS, f"train_throughput_{device.type}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
