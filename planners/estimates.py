"""Reading a scalar (a reward or a value-to-go) off the model's distribution over its bins.

TT reads rewards and values as expectations over bin centres (``percentile=mean``). A lower quantile
instead ranks plans by what the model thinks they return at worst with probability ``q``: a plan
whose predicted reward is uncertain (wide distribution) then scores lower than one the model is sure
of, which guards the search against the plans the model over-estimates.
"""
from __future__ import annotations

import torch

from trajectory.config import parse_percentile  # the one check of the setting, where it enters

__all__ = ["parse_percentile", "read_scalar", "token_values"]


def token_values(centres: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens [R, D] of D consecutive dimensions -> their bin centres [R, D] (``centres`` [D, V])."""
    return centres[torch.arange(centres.shape[0], device=tokens.device), tokens.long()]


def read_scalar(logits: torch.Tensor, discretizer, dim: int, quantile: float | None) -> torch.Tensor:
    """logits [N, V] over the bins of transition dimension ``dim`` -> [N] float32.

    quantile None: the expectation over bin centres; else the centre of the first bin at which the
    cumulative probability reaches ``quantile`` (bin centres increase with the bin index)."""
    probs = logits.float().softmax(dim=-1)
    if quantile is None:
        return discretizer.expectation(probs, dim).float()
    centres = torch.as_tensor(discretizer.centres[dim], dtype=torch.float32, device=logits.device)
    below = (probs.cumsum(dim=-1) < quantile).sum(dim=-1)  # bins entirely below the quantile
    return centres[below.clamp_max(centres.shape[0] - 1)]
