"""Token filtering and sampling for the planner.

Sampling draws by inverse CDF from uniform numbers of an explicit generator, so two planners fed the
same seed and (numerically) the same distributions pick the same tokens: that is what lets the tests
compare the cached planner with the re-computing one action for action.
"""
from __future__ import annotations

import numpy as np
import torch


def _numpy_view(x: torch.Tensor) -> np.ndarray | None:
    """``x`` as a numpy array sharing its memory, where numpy can read it (a float CPU tensor), else
    None. Two row-wise operations the planner runs on every decoded token, [rows, bins] at a time,
    are several times faster in numpy than in torch on the CPU (``benchmarks/sampling.py``)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.requires_grad:
        return None
    return x.numpy()


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of every row (the first on ties, as ``torch.argmax``).  [N, V] -> [N]."""
    array = _numpy_view(logits)
    if array is None:
        return logits.argmax(dim=-1)
    return torch.from_numpy(np.argmax(array, axis=-1))


def median(logits: torch.Tensor) -> torch.Tensor:
    """The median token of every row: the first whose cumulative probability reaches 1/2.  [N, V] -> [N].

    Over bins ordered by value this is the distribution's median. For an action that is a monotone
    squashing of a Gaussian (SAC's tanh), the median is the squashed mean, the policy's mean action,
    which the most likely bin need not be: of bins of equal data mass, a wide one near the mean can
    hold more of the probability than the narrow one at it."""
    cumulative = logits.float().softmax(dim=-1).cumsum(dim=-1)
    return (cumulative < 0.5).sum(dim=-1).clamp_max(logits.shape[-1] - 1)


def ascending_values(x: torch.Tensor) -> torch.Tensor:
    """Every row's values sorted ascending (values only, no indices).  [N, V] -> [N, V]."""
    array = _numpy_view(x)
    if array is None:
        return x.sort(dim=-1).values
    return torch.from_numpy(np.sort(array, axis=-1))


def filter_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the ``k`` most likely tokens.  logits: [N, V]."""
    if k is None or k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_cdf(logits: torch.Tensor, cdf: float | None) -> torch.Tensor:
    """Drop the least likely tokens whose total probability stays below ``cdf`` (TT's ``cdf_act``).

    With cdf = 0.6 the unlikely tail holding up to 60% of the mass is removed, so sampling happens
    among the most likely tokens that hold the remaining (at least) 40%. The argmax always survives,
    and so does every token exactly as likely as the least likely one kept.
    """
    if cdf is None or cdf <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    return logits.masked_fill(probs < least_kept_probability(probs, cdf), float("-inf"))


def filter_cdf_by_sorting(logits: torch.Tensor, cdf: float) -> torch.Tensor:
    """``filter_cdf`` written from its definition (index sort, running sum, scatter back): the
    reference the tests and ``benchmarks/sampling.py`` compare the fast form with (the same tokens
    except that this one splits ties at the boundary by sort order)."""
    probs = logits.softmax(dim=-1)
    ascending, order = probs.sort(dim=-1)
    tail = ascending.cumsum(dim=-1) < cdf
    tail[..., -1] = False  # never drop the most likely token
    drop = torch.zeros_like(tail).scatter(-1, order, tail)
    return logits.masked_fill(drop, float("-inf"))


def least_kept_probability(probs: torch.Tensor, cdf: float) -> torch.Tensor:
    """The probability of the least likely token ``filter_cdf`` keeps, per row.  [N, V] -> [N, 1]."""
    # The dropped tail is the start of the ascending order whose running sum stays below cdf; so it
    # is every token less likely than the least likely token kept (no index sort or scatter needed).
    ascending = ascending_values(probs)
    dropped = (ascending.cumsum(dim=-1) < cdf).sum(dim=-1, keepdim=True)
    return ascending.gather(-1, dropped.clamp_max(probs.shape[-1] - 1))  # the argmax always stays


def median_or_drawn(logits: torch.Tensor, copies: int, generator: torch.Generator | None, k: int | None,
                    cdf: float | None) -> torch.Tensor:
    """Rows are ``copies`` candidates per env (env-major): the first of each takes the median
    token, the others a draw as :func:`sample` makes it.  logits [R, V] -> [R]."""
    drawn = sample(logits, generator, k, cdf)
    is_median = torch.arange(len(logits), device=logits.device) % copies == 0
    return torch.where(is_median, median(logits), drawn)


def kept_cumulative(logits: torch.Tensor, top_k: int | None, cdf: float | None) -> torch.Tensor:
    """The running sum of the probabilities the filters keep (dropped tokens add 0), [N, V]: the
    inverse CDF :func:`sample` draws from."""
    probs = filter_top_k(logits.float(), top_k).softmax(dim=-1)
    if cdf is not None and cdf > 0:  # the filtered tokens' probabilities, left unnormalized
        probs = probs.masked_fill(probs < least_kept_probability(probs, cdf), 0.0)
    return probs.cumsum(dim=-1)


def sample(logits: torch.Tensor, generator: torch.Generator | None,
           top_k: int | None = None, cdf: float | None = None) -> torch.Tensor:
    """One token per row from filtered logits [N, V] -> [N]; ``top_k=1`` is greedy."""
    if top_k == 1:
        return greedy(logits)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device)
    cumulative = kept_cumulative(logits, top_k, cdf)
    u = u * cumulative[:, -1:]  # the kept mass (and a last cumulative value slightly below 1)
    # right=True: the first token whose running sum exceeds u, never a dropped one even at u = 0
    return torch.searchsorted(cumulative, u, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)
