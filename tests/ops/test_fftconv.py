"""FFT causal convolution against the direct convolution."""
import pytest
import torch

from trajectory.models.ops.fftconv import fft_conv, fft_conv_ref

C = 4


def inputs(L: int, taps: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2, C, L, generator=g, dtype=dtype)
    k = torch.randn(C, taps, generator=g, dtype=dtype)
    D = torch.randn(C, generator=g, dtype=dtype)
    return u, k, D


@pytest.mark.parametrize("L", [1, 7, 16, 33])
@pytest.mark.parametrize("taps_extra", [-3, 0, 5])  # filter shorter than, equal to, longer than L
@pytest.mark.parametrize("use_D", [False, True])
def test_fft_conv_matches_direct(L, taps_extra, use_D):
    u, k, D = inputs(L, max(1, L + taps_extra))
    D = D if use_D else None
    torch.testing.assert_close(fft_conv(u, k, D), fft_conv_ref(u, k, D), rtol=1e-10, atol=1e-10)


def test_fft_conv_direct_formula():
    """The reference itself against the defining sum y_t = sum_{s<=t} k_s u_{t-s} + D u_t."""
    u, k, D = inputs(6, 6)
    y = fft_conv_ref(u, k, D)
    for t in range(6):
        expected = sum(k[:, s] * u[..., t - s] for s in range(t + 1)) + D * u[..., t]
        torch.testing.assert_close(y[..., t], expected)


def test_fft_conv_gradients_match_direct():
    u, k, D = inputs(13, 13)
    grads = []
    for fn in (fft_conv, fft_conv_ref):
        leaves = [t.clone().requires_grad_() for t in (u, k, D)]
        w = torch.randn(u.shape, generator=torch.Generator().manual_seed(3), dtype=u.dtype)
        (fn(*leaves) * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for g, g_ref in zip(*grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_fft_conv_with_precomputed_spectrum():
    """A filter spectrum taken once at n = 2 * L_max serves every shorter input."""
    u, k, D = inputs(10, 32)
    k_f = torch.fft.rfft(k, n=64)
    torch.testing.assert_close(fft_conv(u, k, D, k_f=k_f), fft_conv_ref(u, k, D))
    with pytest.raises(ValueError):
        fft_conv(torch.randn(2, C, 40, dtype=torch.float64), k, D, k_f=k_f)


def test_fft_conv_is_causal():
    u, k, D = inputs(20, 20)
    changed = u.clone()
    changed[..., 12:] = torch.randn_like(changed[..., 12:])
    torch.testing.assert_close(fft_conv(changed, k, D)[..., :12], fft_conv(u, k, D)[..., :12])


def test_fft_conv_float32_and_bfloat16():
    u, k, D = inputs(50, 50, dtype=torch.float32)
    torch.testing.assert_close(fft_conv(u, k, D), fft_conv_ref(u, k, D), rtol=1e-4, atol=1e-4)
    y = fft_conv(u.bfloat16(), k, D)  # odd length: half-precision FFTs would refuse it
    assert y.dtype == torch.bfloat16
