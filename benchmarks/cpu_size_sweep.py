"""Which model size trains best in a fixed CPU budget? Loss after N minutes (on 2 cores) vs size.

1. Measure each size's training throughput on this machine (2 threads, one run at a time).
2. Give each size the tokens that N minutes at that throughput buy, and train it with train.py
   (runs may execute side by side with fewer threads each: the token budget, not the wall clock,
   makes them equivalent to N minutes on the whole machine).
3. Score every checkpoint on the same fixed sample of windows (weighted loss and per-group loss).

    python benchmarks/cpu_size_sweep.py --core gpt --sizes 64x2,128x2,128x4 --minutes 20

Writes benchmarks/results/cpu_size_sweep_<core>.json and a plot beside it; ``python benchmarks/tables.py
benchmarks/results/cpu_size_sweep_<core>.json --readme docs/training.md`` then rewrites its table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from train_throughput import measure  # noqa: E402

from trajectory.checkpoint import load_checkpoint  # noqa: E402
from trajectory.config import TrainRunConfig  # noqa: E402
from trajectory.configutil import build_config  # noqa: E402
from trajectory.io import save_json  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def size_overrides(size: str, batch: int) -> list[str]:
    d_model, n_layers = (int(v) for v in size.split("x"))
    return [f"model.d_model={d_model}", f"model.n_layers={n_layers}", f"train.batch_size={batch}"]


@torch.no_grad()
def score(run_dir: str, dataset, windows: np.ndarray) -> dict:
    checkpoint = load_checkpoint(run_dir)
    model = checkpoint.build_model("cpu")
    totals = {"loss": 0.0, "obs": 0.0, "act": 0.0, "reward": 0.0, "value": 0.0}
    chunks = np.array_split(windows, max(1, len(windows) // 256))
    for chunk in chunks:
        batch = dataset.batch(chunk)
        loss, groups = model.loss(model(batch["x"]), batch["y"], batch["mask"])
        totals["loss"] += loss.item() / len(chunks)
        for name, value in groups.items():
            totals[name] += value.item() / len(chunks)
    return totals


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--core", default="gpt")
    parser.add_argument("--sizes", default="64x2,128x2,128x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (threads split)")
    parser.add_argument("--measure-seconds", type=float, default=15.0)
    parser.add_argument("--eval-windows", type=int, default=8192)
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "sweep"))
    args = parser.parse_args(argv)
    base_config = os.path.join(ROOT, f"configs/cpu/halfcheetah_medium_{args.core}.yaml")
    sizes = args.sizes.split(",")

    torch.set_num_threads(2)
    rates = {}
    for size in sizes:
        cfg = build_config(TrainRunConfig, base_config, size_overrides(size, args.batch))
        result = measure(cfg, torch.device("cpu"), False, False, args.measure_seconds, None)
        rates[size] = result
        print(f"{size}: {result['tokens_per_s']:,.0f} tokens/s, {result['params']:,} params", flush=True)

    threads = max(1, 2 // args.parallel)

    def train(size: str) -> str:
        tokens = int(rates[size]["tokens_per_s"] * args.minutes * 60)
        name = f"{args.core}-{size}"
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={base_config}",
               *size_overrides(size, args.batch), f"train.max_tokens={tokens}", "train.budget_minutes=0",
               f"runs_dir={args.runs_dir}", f"name={name}", "train.save_every=0"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(os.path.join(RESULTS, f"cpu_size_sweep_{name}.log"), "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        return os.path.join(args.runs_dir, name)

    os.makedirs(RESULTS, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        run_dirs = dict(zip(sizes, pool.map(train, sizes)))

    from trajectory.data.dataset import build_dataset
    cfg = build_config(TrainRunConfig, base_config)
    dataset, _, _ = build_dataset(cfg.data)
    windows = np.random.default_rng(0).choice(len(dataset), args.eval_windows, replace=False)
    rows = []
    for size in sizes:
        metrics = json.load(open(os.path.join(run_dirs[size], "checkpoint", "metrics.json")))
        rows.append({"size": size, "params": rates[size]["params"],
                     "tokens_per_s": rates[size]["tokens_per_s"],
                     "tokens": metrics["tokens"], **score(run_dirs[size], dataset, windows)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"core": args.core, "minutes": args.minutes, "batch": args.batch, "rows": rows,
           "eval_windows": args.eval_windows}
    path = os.path.join(RESULTS, f"cpu_size_sweep_{args.core}.json")
    save_json(out, path)
    plot(rows, path.replace(".json", ".png"), args.core, args.minutes)
    return out


def plot(rows: list[dict], path: str, core: str, minutes: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["params"] for r in rows], [r["loss"] for r in rows], "o-")
    for r in rows:
        ax.annotate(r["size"], (r["params"], r["loss"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("weighted loss on fixed windows")
    ax.set_title(f"{core}: loss after {minutes:g} min on 2 CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
