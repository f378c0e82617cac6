"""RetNet vs Transformer at matched parameter counts over a grid of hyperparameters.

    python -m experiments.lm.grid_search --config=configs/lm/grid_small.yaml
    python -m experiments.lm.grid_search --config=configs/lm/grid_full.yaml device=cuda

Every point of lrs x d_models x ffn_dims x heads x seq_lens trains each model of ``models`` for the
same steps on the same batches (see :mod:`experiments.lm.matching` for how sizes are matched),
then evaluates it. Writes ``<out>.csv`` (one row per point and model: loss, perplexity, bits per
character, parameters, train time, tokens/s), ``<out>.png`` and ``<out>.json`` (settings, winners).
"""
from __future__ import annotations

import copy
import csv
import io
import itertools
import os
import sys
import time

from experiments.lm.config import GridConfig, LMModelConfig, LMRunConfig
from experiments.lm.dataset import TokenData, prepare_data
from experiments.lm.matching import matched_pair
from experiments.lm.train import LMTrainer, set_threads
from trajectory.cli import run
from trajectory.configutil import ConfigError, to_dict
from trajectory.io import atomic_open, save_json, save_text
from trajectory.training import distributed

EXAMPLES = """
python -m experiments.lm.grid_search --config=configs/lm/grid_small.yaml
python -m experiments.lm.grid_search --config=configs/lm/grid_small.yaml train.max_steps=50 out=runs/lm/quick
"""

COLUMNS = ["point", "model", "lr", "d_model", "ffn_dim", "ffn_built", "heads", "seq_len", "n_layers",
           "params", "param_gap", "steps", "train_seconds", "tokens_per_s", "val_loss", "val_bpc",
           "test_loss", "test_perplexity", "test_bpc"]


def grid_points(cfg: GridConfig) -> list[dict]:
    return [dict(lr=lr, d_model=d, ffn_dim=f, heads=h, seq_len=t) for lr, d, f, h, t in
            itertools.product(cfg.lrs, cfg.d_models, cfg.ffn_dims, cfg.heads, cfg.seq_lens)]


def point_models(cfg: GridConfig, point: dict,
                 vocab_size: int) -> dict[str, tuple[LMModelConfig, int, float]]:
    """model name -> (config, FFN width built, parameter gap) for one grid point."""
    base = LMModelConfig(d_model=point["d_model"], n_layers=cfg.n_layers, n_heads=point["heads"],
                         dropout=cfg.dropout, embedding_dropout=cfg.dropout)
    pair = matched_pair(base, point["ffn_dim"], vocab_size, point["seq_len"], cfg.retnet_value_factor)
    if pair.gap > cfg.param_tolerance:
        raise ConfigError(f"parameter counts differ by {pair.gap:.2%} at {point} (> param_tolerance)")
    return {"gpt": (pair.transformer, pair.transformer_ffn, pair.gap),
            "retnet": (pair.retnet, pair.retnet_ffn, pair.gap)}


def check_sizes(cfg: GridConfig, points: list[dict], vocab_size: int) -> None:
    """Fail on an unmatched size before any training (the learning rate does not change sizes)."""
    sizes = {(p["d_model"], p["ffn_dim"], p["heads"], p["seq_len"]): p for p in points}
    for point in sizes.values():
        point_models(cfg, point, vocab_size)


def run_point(cfg: GridConfig, data: TokenData, index: int, point: dict,
              ctx: distributed.DistContext) -> list[dict]:
    rows = []
    models = point_models(cfg, point, data.tokenizer.vocab_size)
    for name in cfg.models:
        if name not in models:
            raise ConfigError(f"grid models must be among {sorted(models)}, got '{name}'")
        model_cfg, ffn_built, gap = models[name]
        run_cfg = LMRunConfig(name=f"{index:03d}-{name}", runs_dir=cfg.runs_dir, device=cfg.device,
                              seed=cfg.seed, data=copy.deepcopy(cfg.data), model=model_cfg,
                              train=copy.deepcopy(cfg.train))
        run_cfg.data.seq_len, run_cfg.train.lr = point["seq_len"], point["lr"]
        trainer = LMTrainer(run_cfg, data, ctx, os.path.join(run_cfg.runs_dir, run_cfg.name))
        m = trainer.fit()
        rows.append({"point": index, "model": name, **point, "ffn_built": ffn_built,
                     "n_layers": cfg.n_layers, "params": m["parameters"], "param_gap": gap,
                     "steps": m["step"], "train_seconds": m["train_seconds"],
                     "tokens_per_s": m["tokens_per_s"], "val_loss": m["val_loss"],
                     "val_bpc": m["val_bpc"], "test_loss": m["test_loss"],
                     "test_perplexity": m["test_perplexity"], "test_bpc": m["test_bpc"]})
        print(f"point {index} {name}: {m['parameters']:,} params, test loss {m['test_loss']:.4f}, "
              f"{m['tokens_per_s']:,.0f} tok/s", flush=True)
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    save_text(buf.getvalue(), path)


def plot(rows: list[dict], path: str) -> None:
    """Test loss and throughput of each model per grid point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    points = sorted({r["point"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(models)
    for i, name in enumerate(models):
        by_point = {r["point"]: r for r in rows if r["model"] == name}
        xs = [p + (i - (len(models) - 1) / 2) * width for p in points]
        axes[0].bar(xs, [by_point[p]["test_loss"] for p in points], width, label=name)
        axes[1].bar(xs, [by_point[p]["tokens_per_s"] for p in points], width, label=name)
    labels = [_point_label(next(r for r in rows if r["point"] == p)) for p in points]
    for ax, title in zip(axes, ("test loss (nats/token)", "training tokens/s")):
        ax.set_xticks(points)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        ax.legend()
    low = min(r["test_loss"] for r in rows)
    axes[0].set_ylim(bottom=max(0.0, low - 0.3))
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def _point_label(row: dict) -> str:
    return f"lr{row['lr']:g} d{row['d_model']} f{row['ffn_dim']} h{row['heads']} T{row['seq_len']}"


def winners(rows: list[dict]) -> dict:
    best: dict[int, dict] = {}
    for r in rows:
        if r["point"] not in best or r["test_loss"] < best[r["point"]]["test_loss"]:
            best[r["point"]] = r
    counts: dict[str, int] = {}
    for r in best.values():
        counts[r["model"]] = counts.get(r["model"], 0) + 1
    return {"wins": counts, "best_overall": min(rows, key=lambda r: r["test_loss"])}


def grid_search(cfg: GridConfig) -> list[dict]:
    ctx = distributed.setup(cfg.device)
    try:
        set_threads(cfg.threads, ctx)
        data_cfg = copy.deepcopy(cfg.data)
        data_cfg.seq_len = max(cfg.seq_lens)  # every split must hold one window of the longest
        data = prepare_data(data_cfg)
        points = grid_points(cfg)
        check_sizes(cfg, points, data.tokenizer.vocab_size)
        print(f"grid: {len(points)} points x {len(cfg.models)} models, {cfg.train.max_steps} steps each",
              flush=True)
        rows, start = [], time.time()
        for index, point in enumerate(points):
            rows.extend(run_point(cfg, data, index, point, ctx))
            if ctx.is_main:
                write_csv(rows, cfg.out + ".csv")  # after every point: a partial grid is kept
        if ctx.is_main:
            plot(rows, cfg.out + ".png")
            save_json({"config": to_dict(cfg), "minutes": (time.time() - start) / 60,
                       "vocab_size": data.tokenizer.vocab_size, **winners(rows)}, cfg.out + ".json")
            print(f"wrote {cfg.out}.csv, {cfg.out}.png, {cfg.out}.json")
        return rows
    finally:
        distributed.cleanup()


def main(argv=None) -> int:
    return run(GridConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, grid_search)


if __name__ == "__main__":
    sys.exit(main())
