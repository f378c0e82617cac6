"""Reading a scalar (a reward or a value-to-go) off the model's distribution over its bins, as TT
does: the expectation over bin centres."""
from __future__ import annotations

import torch

__all__ = ["read_scalar", "token_values"]


def token_values(centres: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens [R, D] of D consecutive dimensions -> their bin centres [R, D] (``centres`` [D, V])."""
    return centres[torch.arange(centres.shape[0], device=tokens.device), tokens.long()]


def read_scalar(logits: torch.Tensor, discretizer, dim: int) -> torch.Tensor:
    """logits [N, V] over the bins of transition dimension ``dim`` -> their expectation [N] float32."""
    return discretizer.expectation(logits.float().softmax(dim=-1), dim).float()
