"""Train a character- or BPE-level language model on any core, on one process or with torchrun/DDP.

    python -m experiments.lm.train --config=configs/lm/gpt.yaml
    python -m experiments.lm.train --config=configs/lm/simple_rnn.yaml model.core_options.variant=fused
    python -m experiments.lm.train --resume runs/lm/shakespeare-char-gpt train.max_steps=10000
    python -m torch.distributed.run --standalone --nproc_per_node=2 -m experiments.lm.train \\
        --config=configs/lm/retnet.yaml

Writes <runs_dir>/<name>/: tensorboard scalars under tb/ (train/*, val/*), and checkpoint/ (config,
weights, tokenizer, metrics with validation loss and bits per character, and the optimizer state) at
every evaluation. ``--resume <run>`` continues a run exactly: batches depend only on (seed, step).
The distributed plumbing, optimizer groups and learning-rate schedule are the package's.
"""
from __future__ import annotations

import sys
from typing import Any

from experiments.lm.config import LMRunConfig
from trajectory.cli import run_resumable

EXAMPLES = """
python -m experiments.lm.train --config=configs/lm/gpt.yaml
python -m experiments.lm.train --config=configs/lm/s5.yaml data.tokenizer=bpe train.budget_minutes=5
python -m experiments.lm.train --config=configs/lm/gpt.yaml data.text_file=my_corpus.txt
python -m experiments.lm.train --resume runs/lm/shakespeare-char-gpt train.max_steps=10000
python -m torch.distributed.run --standalone --nproc_per_node=2 -m experiments.lm.train \\
    --config=configs/lm/retnet.yaml
"""


def _train(cfg: LMRunConfig, resume_dir: str | None) -> dict:
    from experiments.lm.catalog import LM_CORE_CATALOG
    from trajectory.models.cores import check_core_config
    check_core_config(cfg.model.core, cfg.model.core_options, catalog=LM_CORE_CATALOG)  # torch-free
    from experiments.lm.trainer import train
    return train(cfg, resume_dir)


def _resumable_config(path: str) -> str:
    from experiments.lm.checkpoint import resumable_config
    return resumable_config(path)


def main(argv=None) -> int:
    # ConfigErrors raised while reading the corpus or building the model exit cleanly in run()
    return run_resumable(LMRunConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, _train,
                         _resumable_config)


def __getattr__(name: str) -> Any:
    # the trainer (and torch) load on first use: the command line is checked before torch is imported
    from experiments.lm import trainer
    return getattr(trainer, name)


if __name__ == "__main__":
    sys.exit(main())
