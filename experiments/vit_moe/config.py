"""Structured configs of the ViT / ViT-MoE experiment: data, model, training, and the run's root.

Defaults are a small ViT sized for Fashion-MNIST on a CPU; ``configs/vit_moe/*.yaml`` pick the
variant. Unknown keys and wrong types fail at start-up (see :mod:`trajectory.configutil`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trajectory.configutil import ConfigError

VARIANTS = ("vit", "moe", "random")
SOURCES = ("fashion_mnist", "cifar", "synthetic")


@dataclass
class DataConfig:
    source: str = "fashion_mnist"  # fashion_mnist | cifar (CIFAR-10/100 python folder) | synthetic
    root: str = ""  # folder of the files ('': /usr/share/datasets/fashion-mnist for fashion_mnist)
    train_limit: int = 0  # use the first N training images (0: all); synthetic: how many to make
    test_limit: int = 0  # use the first N test images (0: all); synthetic: how many to make

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {', '.join(SOURCES)}, got '{self.source}'")
        if self.train_limit < 0 or self.test_limit < 0:
            raise ConfigError("data.train_limit and data.test_limit must be >= 0")


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

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {', '.join(VARIANTS)}, got '{self.variant}'")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by "
                              f"model.n_heads={self.n_heads}")
        if self.n_experts < 1:
            raise ConfigError(f"model.n_experts must be >= 1, got {self.n_experts}")

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

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("train.batch_size and train.epochs must be >= 1")
        if self.consistency_weight < 0:
            raise ConfigError("train.consistency_weight must be >= 0")


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

    def __post_init__(self) -> None:
        if self.train.consistency_weight and self.model.variant != "random":
            raise ConfigError("train.consistency_weight needs model.variant=random (it compares two "
                              "random routings of the same image)")

    @property
    def run_name(self) -> str:
        return self.name or f"vit_moe-{self.model.variant}"
