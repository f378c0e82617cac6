"""Layers shared by the package's small networks: an ensemble of MLPs run as one batched product.

The IQL critic (:mod:`trajectory.models.critic`) keeps its Q ensemble this way, and the SAC
population (:mod:`trajectory.behaviour`) its actors and critics, one member per leading index.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied with one batched matmul.  x: [M, N, in]."""

    def __init__(self, members: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default init, per member
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, N, in] -> [M, N, out]
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Sequential):
    """Two hidden ReLU layers per member: [M, N, in] -> [M, N, out]."""

    def __init__(self, members: int, d_in: int, hidden: int, d_out: int):
        super().__init__(EnsembleLinear(members, d_in, hidden), nn.ReLU(),
                         EnsembleLinear(members, hidden, hidden), nn.ReLU(),
                         EnsembleLinear(members, hidden, d_out))
