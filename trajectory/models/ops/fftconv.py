"""Causal long convolution by FFT, with a per-channel skip (bias) term.

    y[..., c, t] = sum_{s=0}^{t} k[c, s] * u[..., c, t - s]  +  D[c] * u[..., c, t]

Zero-padding both signals to ``n = 2L`` turns the FFT's circular convolution into a linear one, so
the first ``L`` outputs are exactly the causal convolution (Hyena, Poli et al. 2023, Sec. 3.3 and
Alg. 3). Cost O(L log L) per channel instead of O(L^2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def fft_conv(u: Tensor, k: Tensor, D: Tensor | None = None, k_f: Tensor | None = None) -> Tensor:
    """Causal convolution of ``u`` with the filter ``k`` along the last dimension.

    Args:
        u: input ``[..., C, L]``.
        k: filter ``[C, L_k]``; taps beyond ``L`` are ignored, a shorter filter is zero-padded.
        D: optional skip weight ``[C]``, adds ``D * u``.
        k_f: optional precomputed ``torch.fft.rfft(k, n=n_fft)`` ``[C, n_fft // 2 + 1]`` with
            ``n_fft >= 2L`` (e.g. from a filter cache); ``k`` is then only used for its shape.

    Returns:
        ``y``: ``[..., C, L]``, dtype of ``u`` (the transform runs in float32 at least, since
        half-precision FFTs are limited to powers of two).
    """
    L = u.shape[-1]
    n_fft = 2 * L if k_f is None else 2 * (k_f.shape[-1] - 1)
    if n_fft < 2 * L:
        raise ValueError(f"k_f was computed for n_fft={n_fft}, too short for length {L}")
    work = torch.promote_types(u.dtype, torch.float32)
    if k_f is None:
        k_f = torch.fft.rfft(k[..., :L].to(work), n=n_fft)  # [C, n_fft/2 + 1]
    u_f = torch.fft.rfft(u.to(work), n=n_fft)  # [..., C, n_fft/2 + 1]
    y = torch.fft.irfft(u_f * k_f, n=n_fft)[..., :L]  # [..., C, L]
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    return y.to(u.dtype)


def fft_conv_ref(u: Tensor, k: Tensor, D: Tensor | None = None) -> Tensor:
    """Direct O(L^2) reference for :func:`fft_conv`: a depthwise ``conv1d`` with the filter flipped
    (conv1d correlates) and ``L - 1`` zeros of left padding, so output t sees inputs <= t."""
    L, C = u.shape[-1], u.shape[-2]
    k = k[..., :L]
    taps = k.shape[-1]
    flat = u.reshape(-1, C, L)  # [N, C, L]
    y = F.conv1d(F.pad(flat, (taps - 1, 0)), k.flip(-1).unsqueeze(1), groups=C)  # [N, C, L]
    y = y.reshape(u.shape)
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    return y
