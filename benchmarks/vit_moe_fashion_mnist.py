"""Fashion-MNIST: ViT vs ViT-MoE vs random-routing ViT, same data, size and epochs.

Trains the three configs of configs/vit_moe/ in one process, taking turns step by step, so load from
other processes on a shared machine falls on all three alike. Each epoch records the test accuracy,
the training time (the sum of the run's own steps) and the time to score the 10,000 test images.

    nice -n 19 python benchmarks/vit_moe_fashion_mnist.py [train.epochs=5 data.train_limit=10000 ...]

Overrides apply to every variant. Writes benchmarks/results/vit_moe_fashion_mnist.{json,png,md}
(after every round, so an interrupted run keeps what it measured).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys

import torch

from experiments.vit_moe.config import RunConfig
from experiments.vit_moe.data import load_images
from experiments.vit_moe.train import Trainer
from trajectory.configutil import build_config, to_dict
from trajectory.io import save_json, save_text
from trajectory.training.distributed import DistContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "vit_moe_fashion_mnist")
VARIANTS = {"vit": "ViT", "moe": "ViT-MoE (top-1 gate)", "random": "ViT-MoE, random routing"}


def build_configs(overrides: list[str]) -> dict[str, RunConfig]:
    configs = {v: build_config(RunConfig, os.path.join(ROOT, "configs", "vit_moe", f"{v}.yaml"),
                               ["runs_dir=runs/vit_moe_benchmark", *overrides]) for v in VARIANTS}
    first = configs["vit"]
    for variant, cfg in configs.items():  # the comparison is only fair on the same data and budget
        if cfg.data != first.data or cfg.train.epochs != first.train.epochs or cfg.seed != first.seed:
            raise SystemExit(f"error: configs/vit_moe/{variant}.yaml differs from vit.yaml in data, "
                             f"epochs or seed")
    return configs


def summarise(trainer: Trainer) -> dict:
    history = trainer.metrics["history"]
    return {"parameters": trainer.metrics["parameters"], "history": history,
            "final_test_accuracy": history[-1]["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in history),
            "median_train_seconds_per_epoch": statistics.median(r["train_seconds"] for r in history),
            "median_test_seconds": statistics.median(r["test_seconds"] for r in history)}


def table(results: dict) -> str:
    base = results["vit"]["median_train_seconds_per_epoch"]
    lines = ["| model | experts | params (total) | params (inference) | test acc. (final / best) | "
             "train s/epoch (x ViT) | test-set inference s |",
             "|---|:-:|--:|--:|:-:|--:|--:|"]
    for variant, name in VARIANTS.items():
        if variant not in results:
            continue
        r, cfg = results[variant], results["configs"][variant]
        experts = "-" if variant == "vit" else str(cfg["model"]["n_experts"])
        seconds = r["median_train_seconds_per_epoch"]
        lines.append(f"| {name} | {experts} | {r['parameters']['total']:,} | "
                     f"{r['parameters']['inference']:,} | {100 * r['final_test_accuracy']:.2f} / "
                     f"{100 * r['best_test_accuracy']:.2f} | {seconds:.0f} ({seconds / base:.2f}x) | "
                     f"{r['median_test_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for variant, name in VARIANTS.items():
        if variant in results:
            history = results[variant]["history"]
            ax.plot([r["epoch"] for r in history], [100 * r["test_accuracy"] for r in history], "o-",
                    label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST, same size and budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    overrides = list(sys.argv[1:] if argv is None else argv)
    configs = build_configs(overrides)
    images = load_images(configs["vit"].data, seed=configs["vit"].seed)  # one copy for all three
    trainers = {v: Trainer(cfg, images, DistContext(), quiet=True) for v, cfg in configs.items()}
    results: dict = {"dataset": "fashion_mnist", "train_images": len(images.train_labels),
                     "test_images": len(images.test_labels), "overrides": overrides,
                     "machine": {"cpu": platform.processor() or platform.machine(),
                                 "threads": torch.get_num_threads(), "torch": torch.__version__},
                     "configs": {v: to_dict(cfg) for v, cfg in configs.items()}}
    while not all(t.done for t in trainers.values()):
        epochs = {v: t.epoch_steps() for v, t in trainers.items() if not t.done}
        while epochs:  # one step of each run in turn
            for variant in list(epochs):
                if next(epochs[variant], None) is None:
                    del epochs[variant]
        for variant, trainer in trainers.items():
            record = trainer.metrics["history"][-1]
            print(f"{variant:>6} epoch {record['epoch']}: test acc {record['test_accuracy']:.4f}, "
                  f"train {record['train_seconds']:.0f} s, test {record['test_seconds']:.1f} s", flush=True)
            results[variant] = summarise(trainer)
        save_json(results, RESULTS + ".json")
        save_text(table(results), RESULTS + ".md")
        plot(results, RESULTS + ".png")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
