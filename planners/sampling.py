"""Token filtering and sampling for the planner.

Sampling draws by inverse CDF from uniform numbers of an explicit generator, so two planners fed the
same seed and (numerically) the same distributions pick the same tokens: that is what lets the tests
compare the cached planner with the re-computing one action for action.
"""
from __future__ import annotations

import torch


def filter_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the ``k`` most likely tokens.  logits: [N, V]."""
    if k is None or k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_cdf(logits: torch.Tensor, cdf: float | None) -> torch.Tensor:
    """Drop the least likely tokens whose total probability stays below ``cdf`` (TT's ``cdf_act``).

    With cdf = 0.6 the unlikely tail holding up to 60% of the mass is removed, so sampling happens
    among the most likely tokens that hold the remaining (at least) 40%. The argmax always survives.
    """
    if cdf is None or cdf <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    ascending, order = probs.sort(dim=-1)
    tail = ascending.cumsum(dim=-1) < cdf  # [N, V] True for tokens inside the dropped tail
    tail[..., -1] = False  # never drop the most likely token
    drop = torch.zeros_like(tail).scatter(-1, order, tail)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: torch.Tensor, generator: torch.Generator | None,
           top_k: int | None = None, cdf: float | None = None) -> torch.Tensor:
    """One token per row from filtered logits [N, V] -> [N]; ``top_k=1`` is greedy."""
    if top_k == 1:
        return logits.argmax(dim=-1)
    logits = filter_cdf(filter_top_k(logits.float(), top_k), cdf)
    probs = logits.softmax(dim=-1)
    cumulative = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    u = u * cumulative[:, -1:]  # guards against the last cumulative value being slightly below 1
    return torch.searchsorted(cumulative, u).squeeze(-1).clamp_max(probs.shape[-1] - 1)
