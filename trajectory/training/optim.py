"""AdamW with the Trajectory Transformer's parameter groups, and its learning-rate schedule on tokens."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from trajectory.config import TrainConfig

# Only the weight matrices of these layers decay (as in TT / minGPT); norms, embeddings, biases, and
# SSM / filter parameters that are not plain linear weights do not.
DECAYED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _decays(module: nn.Module, name: str) -> bool:
    if name != "weight":
        return False
    if isinstance(module, DECAYED_MODULES):
        return True
    return type(module).__name__ == "EinLinear"  # the per-dimension output heads


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (decay if _decays(module, name) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=tuple(cfg.betas), **extra)


def warmup_cosine(position: int, lr: float, warmup: int, horizon: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` units, then cosine decay to ``min_ratio * lr`` at ``horizon``
    (units are whatever the caller counts: tokens here, steps in the experiments)."""
    if position < warmup:
        return lr * (position + 1) / warmup
    progress = min(1.0, (position - warmup) / max(1, horizon - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_at(tokens: int, cfg: TrainConfig, horizon_tokens: int) -> float:
    """TT's schedule, measured in tokens seen."""
    decay_tokens = cfg.decay_tokens or horizon_tokens
    warmup = cfg.warmup_tokens or max(1, int(0.02 * decay_tokens))
    return warmup_cosine(tokens, cfg.lr, warmup, decay_tokens, cfg.min_lr_ratio)
