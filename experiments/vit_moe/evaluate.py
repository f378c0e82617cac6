"""Score a trained ViT / ViT-MoE checkpoint on its test split; export random routing as a dense ViT.

    python -m experiments.vit_moe.evaluate run=runs/vit_moe-random
    python -m experiments.vit_moe.evaluate run=runs/vit_moe-random dense_out=runs/vit_moe-random-dense
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import ClassVar

from experiments.vit_moe.checkpoint import load_checkpoint, save_checkpoint
from experiments.vit_moe.data import DataError, load_images
from experiments.vit_moe.train import evaluate, parameter_counts
from trajectory.checkpoint_folder import CHECKPOINT_DIR
from trajectory.cli import run
from trajectory.configutil import ConfigError, Ranges, check_ranges
from trajectory.training.distributed import DistContext

EXAMPLES = """
python -m experiments.vit_moe.evaluate run=runs/vit_moe-moe
python -m experiments.vit_moe.evaluate run=runs/vit_moe-random dense_out=runs/vit_moe-random-dense
python -m experiments.vit_moe.evaluate run=runs/vit_moe-vit data_root=/path/to/fashion-mnist
"""


@dataclass
class EvalConfig:
    run: str = ""  # a run folder (runs/<name>) or its checkpoint folder
    data_root: str = ""  # where the images are, if not where the run was trained ('': as trained)
    dense_out: str = ""  # write the model as a dense 'vit' run folder here (vit and random runs only)
    batch_size: int = 1000

    ranges: ClassVar[Ranges] = {"batch_size": "[1, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self)


def evaluate_run(cfg: EvalConfig) -> dict:
    """Test accuracy and parameter counts of a run (and of its dense export, when asked)."""
    run_cfg, model, _ = load_checkpoint(cfg.run)
    if cfg.data_root:
        run_cfg.data.root = cfg.data_root
    images = load_images(run_cfg.data, seed=run_cfg.seed)
    report = {"run": cfg.run, "variant": run_cfg.model.variant, "parameters": parameter_counts(model),
              "test": evaluate(model, images, DistContext(), cfg.batch_size)}
    if cfg.dense_out:
        dense = model.to_dense()
        dense_cfg = dataclasses.replace(run_cfg, model=dense.cfg, train=dataclasses.replace(
            run_cfg.train, consistency_weight=0.0))
        test = evaluate(dense, images, DistContext(), cfg.batch_size)
        save_checkpoint(os.path.join(cfg.dense_out, CHECKPOINT_DIR), dense_cfg, dense,
                        {"variant": "vit", "exported_from": cfg.run, "parameters": parameter_counts(dense),
                         "test": test, "history": []})
        report["dense"] = {"path": cfg.dense_out, "parameters": parameter_counts(dense), "test": test}
    return report


def main(argv: list[str] | None = None) -> int:
    def job(cfg: EvalConfig) -> None:
        if not cfg.run:
            raise ConfigError("name the run to score: run=runs/<name>")
        try:
            print(json.dumps(evaluate_run(cfg), indent=1))
        except (DataError, ValueError) as err:  # CheckpointError is a ConfigError already
            raise ConfigError(str(err)) from None

    return run(EvalConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, job)


if __name__ == "__main__":
    sys.exit(main())
