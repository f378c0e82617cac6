"""Structured configs of the ViT / ViT-MoE experiment: data, model, training, and the run's root.

Defaults are a small ViT sized for Fashion-MNIST on a CPU; ``configs/vit_moe/*.yaml`` pick the
variant. Unknown keys and wrong types fail at start-up (see :mod:`trajectory.configutil`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from trajectory.config import check_betas
from trajectory.configutil import ConfigError, Ranges, check_ranges

VARIANTS = ("vit", "moe", "random")
SOURCES = ("fashion_mnist", "cifar", "synthetic")


@dataclass
class DataConfig:
    source: str = "fashion_mnist"  # fashion_mnist | cifar (CIFAR-10/100 python folder) | synthetic
    root: str = ""  # folder of the files ('': /usr/share/datasets/fashion-mnist for fashion_mnist)
    train_limit: int = 0  # use the first N training images (0: all); synthetic: how many to make
    test_limit: int = 0  # use the first N test images (0: all); synthetic: how many to make

    ranges: ClassVar[Ranges] = {"train_limit": ("[0, inf)", "0: all"), "test_limit": ("[0, inf)", "0: all")}

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {', '.join(SOURCES)}, got '{self.source}'")
        check_ranges(self, "data")


@dataclass
class ModelConfig:
    variant: str = "vit"  # vit (dense MLP) | moe (learned top-1 gate) | random (random routing)
    patch_size: int = 4  # square patches; must divide the image's height and width
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 0  # hidden width of the MLP / of each expert (0: 4 * d_model)
    dropout: float = 0.0  # attention and residual dropout
    n_experts: int = 4  # experts per MoE layer (moe and random)
    balance_weight: float = 0.01  # moe: weight of the load-balancing loss (Switch's alpha)

    ranges: ClassVar[Ranges] = {"patch_size": "[1, inf)", "d_model": "[1, inf)", "n_layers": "[1, inf)",
                                "n_heads": "[1, inf)", "d_ff": ("[0, inf)", "0: 4 * d_model"),
                                "dropout": "[0, 1)", "n_experts": "[1, inf)", "balance_weight": "[0, inf)"}

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {', '.join(VARIANTS)}, got '{self.variant}'")
        check_ranges(self, "model")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by "
                              f"model.n_heads={self.n_heads}")

    @property
    def hidden(self) -> int:
        return self.d_ff or 4 * self.d_model


@dataclass
class TrainConfig:
    batch_size: int = 128  # global batch (split across DDP ranks)
    epochs: int = 10
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.05  # cosine decay ends at this fraction of lr
    warmup_steps: int = 0  # linear warm-up (0: 5% of the run)
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.05  # linear weights only (not norms, embeddings, biases)
    grad_clip: float = 1.0
    consistency_weight: float = 0.0  # random: AdaMix consistency loss (two routings per image)
    max_steps: int = 0  # stop after this many steps (0: run all epochs); for smoke tests
    log_every: int = 50  # steps between tensorboard scalars
    eval_batch_size: int = 1000

    ranges: ClassVar[Ranges] = {"batch_size": "[1, inf)", "epochs": "[1, inf)", "lr": "(0, inf)",
                                "min_lr_ratio": "[0, 1]", "warmup_steps": ("[0, inf)", "0: 5% of the run"),
                                "betas": "[0, 1)", "weight_decay": "[0, inf)", "grad_clip": "(0, inf]",
                                "consistency_weight": "[0, inf)", "max_steps": ("[0, inf)", "0: all epochs"),
                                "log_every": "[1, inf)", "eval_batch_size": "[1, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self, "train")
        check_betas(self.betas)


@dataclass
class RunConfig:
    """Root config of ``python -m experiments.vit_moe.train``."""

    name: str = ""  # run name; runs/<name>/ (default: vit_moe-<variant>)
    runs_dir: str = "runs"
    device: str = "cpu"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    ranges: ClassVar[Ranges] = {"seed": "[0, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.train.consistency_weight and self.model.variant != "random":
            raise ConfigError("train.consistency_weight needs model.variant=random (it compares two "
                              "random routings of the same image)")

    @property
    def run_name(self) -> str:
        return self.name or f"vit_moe-{self.model.variant}"
