"""The parallel scan against the sequential loop: values, gradients, resets, h0, depth and memory."""
import math

import pytest
import torch

import trajectory.models.ops.scan as scan_mod
from trajectory.models.ops.scan import linear_scan, linear_scan_ref

B = 3


def make_inputs(T: int, trailing: tuple, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T) + trailing
    if dtype.is_complex:
        real = dtype.to_real()
        radius = 0.5 + 0.5 * torch.rand(shape, generator=g, dtype=real)  # |a| <= 1, as in an SSM
        angle = 2 * math.pi * torch.rand(shape, generator=g, dtype=real)
        a = torch.polar(radius, angle)
        b = torch.complex(torch.randn(shape, generator=g, dtype=real),
                          torch.randn(shape, generator=g, dtype=real))
        h0 = torch.complex(torch.randn((B,) + trailing, generator=g, dtype=real),
                           torch.randn((B,) + trailing, generator=g, dtype=real))
    else:
        a = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
        b = torch.randn(shape, generator=g, dtype=dtype)
        h0 = torch.randn((B,) + trailing, generator=g, dtype=dtype)
    resets = torch.rand(B, T, generator=g) < 0.3
    resets[0, 0] = True  # a reset at t = 0 must drop h0
    return a, b, h0, resets


def loss_of(h: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A real scalar that weighs every (real and imaginary) component differently."""
    parts = torch.view_as_real(h) if h.is_complex() else h
    w = torch.randn(parts.shape, generator=torch.Generator().manual_seed(seed), dtype=parts.dtype)
    return (parts * w).sum()


def run_with_grads(fn, a, b, h0, resets):
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    h0 = None if h0 is None else h0.clone().requires_grad_()
    h = fn(a, b, resets, h0)
    # with T = 1 and no h0, a is never used: its gradient is zero, not missing
    grads = torch.autograd.grad(loss_of(h), [t for t in (a, b, h0) if t is not None],
                                allow_unused=True, materialize_grads=True)
    return h, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("T", [1, 2, 7, 13, 32])
@pytest.mark.parametrize("use_resets", [False, True])
@pytest.mark.parametrize("use_h0", [False, True])
def test_scan_matches_loop_forward_and_backward(dtype, T, use_resets, use_h0):
    a, b, h0, resets = make_inputs(T, (4,), dtype)
    resets = resets if use_resets else None
    h0 = h0 if use_h0 else None
    h, grads = run_with_grads(linear_scan, a, b, h0, resets)
    h_ref, grads_ref = run_with_grads(linear_scan_ref, a, b, h0, resets)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("trailing", [(), (2, 3)])
def test_scan_any_trailing_shape(trailing):
    a, b, h0, resets = make_inputs(11, trailing, torch.complex128)
    torch.testing.assert_close(linear_scan(a, b, resets, h0), linear_scan_ref(a, b, resets, h0))


def test_scan_broadcast_real_decay_with_complex_input():
    """A per-channel decay shared over batch and time (the S5 case), real a with complex b."""
    _, b, h0, resets = make_inputs(9, (5,), torch.complex128)
    a = torch.rand(5, dtype=torch.float64)
    h = linear_scan(a, b, resets, h0)
    assert h.dtype == torch.complex128 and h.shape == b.shape
    torch.testing.assert_close(h, linear_scan_ref(a, b, resets, h0))


def test_scan_float32_long_sequence():
    a, b, h0, resets = make_inputs(1000, (8,), torch.complex64)
    torch.testing.assert_close(linear_scan(a, b, resets, h0), linear_scan_ref(a, b, resets, h0),
                               rtol=1e-4, atol=1e-4)


def test_reset_cuts_the_carry():
    a, b, h0, _ = make_inputs(6, (2,), torch.float64)
    resets = torch.zeros(B, 6, dtype=torch.bool)
    resets[:, 3] = True
    h = linear_scan(a, b, resets, h0)
    torch.testing.assert_close(h[:, 3], b[:, 3])  # h_t = b_t at a reset
    torch.testing.assert_close(h[:, 3:], linear_scan(a[:, 3:], b[:, 3:]))


def test_scan_depth_is_logarithmic(monkeypatch):
    calls = []
    inner = scan_mod._scan

    def counting(a, b):
        calls.append(b.shape[1])
        return inner(a, b)

    monkeypatch.setattr(scan_mod, "_scan", counting)
    T = 1000
    linear_scan(torch.rand(1, T, 2), torch.randn(1, T, 2))
    assert len(calls) <= math.ceil(math.log2(T)) + 1
    assert sum(calls) < 2 * T  # T + T/2 + T/4 + ...: linear work


def saved_storage_units(T: int, P: int = 8) -> float:
    """Bytes of every storage autograd keeps for backward, in units of one [B, T, P] input."""
    a = (0.9 * torch.rand(2, T, P)).to(torch.complex64).requires_grad_()
    b = torch.randn(2, T, P, dtype=torch.complex64, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_scan(a, b)
    return sum(storages.values()) / (b.numel() * b.element_size())


def test_scan_memory_is_linear_in_T():
    """Saved activations stay a constant multiple of the input (about 5: a, b and ~3 of the levels);
    a Hillis-Steele scan would keep about 2 log2(T) (22 at T = 2048)."""
    small, large = saved_storage_units(256), saved_storage_units(2048)
    assert large < 6
    assert large < 1.1 * small
