"""Reset-aware parallel associative scan for the linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

The recurrence is elementwise over any trailing shape, real or complex, along the time dimension 1
of ``[B, T, ...]`` tensors. It is the parallel form of diagonal state space models (S5, Smith et al.
2023, Sec. 2.2 and App. H) and of other linear RNNs.

Each step is the affine map ``h -> a_t * h + b_t``, written as the pair ``(a_t, b_t)``. Composing
step 1 then step 2 gives

    (a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2)

which is associative, so every prefix can be combined in O(log T) sequential depth.

Algorithm: recursive odd/even reduction (the work-efficient scan of Blelloch, written recursively):

1. combine neighbouring pairs (0,1), (2,3), ... into one sequence of half the length;
2. scan that sequence recursively: its results are exactly ``h`` at the odd positions;
3. fill in the even positions with one step each: ``h_{2i} = a_{2i} * h_{2i-1} + b_{2i}``.

Every level allocates (and autograd saves) a constant number of tensors of its own length, so the
levels together hold O(T + T/2 + T/4 + ...) = O(T) elements, and the depth is 2 log2(T) levels of
elementwise kernels. A Hillis-Steele scan (log2 T passes over the full length) would save O(T log T)
for backward instead. Gradients come from ordinary autograd through these elementwise ops.

Resets cut the carry: where ``resets[b, t]`` is True, ``a_t`` is replaced by 0 so ``h_t = b_t``.
An initial state ``h0`` is folded into the first step: ``b_0 := a_0 * h0 + b_0`` (after resets, so
a reset at t = 0 also drops ``h0``).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _prepare(a: Tensor, b: Tensor, resets: Tensor | None,
             h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """Broadcast ``a`` to ``b``, apply resets (a := 0) and fold ``h0`` into ``b_0``."""
    if b.dim() < 2:
        raise ValueError(f"expected b of shape [B, T, ...], got {tuple(b.shape)}")
    a, b = torch.broadcast_tensors(a, b)
    if resets is not None:
        if resets.shape != b.shape[:2]:
            raise ValueError(f"resets must be [B, T] = {tuple(b.shape[:2])}, got {tuple(resets.shape)}")
        cut = resets.reshape(resets.shape + (1,) * (b.dim() - 2))  # [B, T, 1, ...]
        a = torch.where(cut, torch.zeros((), dtype=a.dtype, device=a.device), a)
    if h0 is not None and b.shape[1] > 0:
        first = a[:, 0] * h0 + b[:, 0]  # [B, ...]
        b = torch.cat([first.unsqueeze(1), b[:, 1:]], dim=1)
    return a, b


def _scan(a: Tensor, b: Tensor) -> Tensor:
    """Inclusive scan of the pairs ``(a_t, b_t)`` along dim 1 from a zero state: returns all ``h_t``."""
    T = b.shape[1]
    if T <= 1:
        return b
    n_pairs = T // 2
    a_even, a_odd = a[:, 0:2 * n_pairs:2], a[:, 1::2]  # [B, T//2, ...] each
    b_even, b_odd = b[:, 0:2 * n_pairs:2], b[:, 1::2]
    # (a_even, b_even) o (a_odd, b_odd): one pair per two steps, covering positions 2i and 2i + 1.
    h_odd = _scan(a_even * a_odd, torch.addcmul(b_odd, a_odd, b_even))  # [B, T//2, ...] = h_1, h_3, ...
    h = b.new_empty(b.shape)
    h[:, 1::2] = h_odd
    h[:, 0] = b[:, 0]  # zero state before the first step
    # Even positions 2, 4, ... (including the last one when T is odd) take one step from h_{2i-1}.
    n_rest = (T - 1) // 2
    h[:, 2::2] = torch.addcmul(b[:, 2::2], a[:, 2::2], h_odd[:, :n_rest])
    return h


def linear_scan(a: Tensor, b: Tensor, resets: Tensor | None = None,
                h0: Tensor | None = None) -> Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (with ``h_{-1} = h0`` or 0), in parallel.

    Args:
        a: decay, ``[B, T, ...]`` or anything broadcastable to ``b`` (e.g. ``[P]``); real or complex.
        b: input, ``[B, T, ...]``; real or complex.
        resets: optional bool ``[B, T]``; True where the carry is cut (``h_t = b_t``).
        h0: optional initial state ``[B, ...]`` (the shape of ``b[:, 0]``).

    Returns:
        ``h``: ``[B, T, ...]`` in the promoted dtype of ``a`` and ``b``. O(log T) depth, O(T) memory,
        differentiable with respect to ``a``, ``b`` and ``h0``.
    """
    a, b = _prepare(a, b, resets, h0)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return _scan(a.to(dtype), b.to(dtype))


def linear_scan_ref(a: Tensor, b: Tensor, resets: Tensor | None = None,
                    h0: Tensor | None = None) -> Tensor:
    """Sequential reference for :func:`linear_scan`: one step per time index (same arguments)."""
    a, b = torch.broadcast_tensors(a, b)
    if resets is not None:
        cut = resets.reshape(resets.shape + (1,) * (b.dim() - 2))  # [B, T, 1, ...]
        a = torch.where(cut, torch.zeros((), dtype=a.dtype, device=a.device), a)
    dtype = torch.promote_types(a.dtype, b.dtype)
    h = torch.zeros_like(b[:, 0], dtype=dtype) if h0 is None else h0.to(dtype)  # [B, ...]
    out = []
    # unbind, not a[:, t]: indexing in a loop is far slower in backward
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        out.append(h)
    if not out:
        return b.to(dtype)
    return torch.stack(out, dim=1)
