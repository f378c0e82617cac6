"""Hyena-specific checks: the paper's recurrence, the decay window, the filter cache, length limits."""
import math

import pytest
import torch

from trajectory.models.cores.base import CoreConfig
from trajectory.models.cores.hyena import HyenaCore
from trajectory.models.ops.fftconv import fft_conv_ref

D, L = 16, 32


def make_core(max_len: int = L, **options) -> HyenaCore:
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=D, n_layers=2, n_heads=2, max_len=max_len, dropout=0.0)
    return HyenaCore(cfg, HyenaCore.Options(**options)).eval()


def count_filter_builds(core: HyenaCore) -> list:
    calls = []
    for block in core.blocks:
        block.mixer.filter.register_forward_hook(lambda *_: calls.append(1))
    return calls


def run_steps(core, x, chunks):
    state, outs, t = core.init_state(x.shape[0], x.device), [], 0
    for size in chunks:
        y, state = core.step(x[:, t:t + size], state)
        outs.append(y)
        t += size
    return torch.cat(outs, dim=1), state


@torch.no_grad()
def test_operator_follows_the_recurrence():
    """z^1 = v, z^{n+1} = x^n * (h^n * z^n + D^n z^n), y = out_proj(z^{N+1}), written with the
    direct convolution: two long convolutions and two gates for order 2."""
    op = make_core().blocks[0].mixer
    u = torch.randn(2, 20, D)
    z = op.short_conv(op.in_proj(u).transpose(1, 2))[..., :20]
    v, x1, x2 = z.split(D, dim=1)
    h = op.filter().view(2, D, L)
    z2 = x1 * fft_conv_ref(v, h[0], op.bias[0])
    z3 = x2 * fft_conv_ref(z2, h[1], op.bias[1])
    torch.testing.assert_close(op(u), op.out_proj(z3.transpose(1, 2)), atol=1e-5, rtol=0)


def test_filter_has_exponential_decay_window():
    f = make_core().blocks[0].mixer.filter
    w = f.window  # [2D, L]
    assert torch.all(w[:, 0] == 1) and torch.all(w[:, 1:] < w[:, :-1])  # starts at 1, decreasing
    # the fastest channel reaches the target (1e-2) at 30% of the filter, the slowest at 150%
    t_fast, t_slow = torch.log(w[-1]) / math.log(1e-2), torch.log(w[0]) / math.log(1e-2)
    torch.testing.assert_close(t_fast, torch.arange(L) / L / 0.3)
    torch.testing.assert_close(t_slow, torch.arange(L) / L / 1.5)
    with torch.no_grad():
        h = f()  # [2D, L]
        torch.testing.assert_close(h, f.mlp(f.z).T * w)
    assert h[:, -L // 4:].abs().mean() < 0.5 * h[:, :L // 4].abs().mean()


def test_step_reuses_the_cached_filter():
    core = make_core()
    calls = count_filter_builds(core)
    x = torch.randn(2, L, D)
    with torch.no_grad():
        run_steps(core, x, [5] + [1] * 20 + [7])
        assert len(calls) == 2  # once per layer, for 22 step calls
        core(x)
        assert len(calls) == 2  # eval forward without gradients shares the cache


def test_filter_cache_follows_parameter_updates_and_train_mode():
    core = make_core()
    calls = count_filter_builds(core)
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        run_steps(core, x, [12])
        core.blocks[1].mixer.filter.mlp[0].weight.mul_(1.5)  # as an optimizer step would
        y_step, _ = run_steps(core, x, [4, 1, 7])
        assert len(calls) == 3  # only the changed layer rebuilt its filter
        torch.testing.assert_close(y_step, core(x), atol=1e-4, rtol=0)
        core.train().eval()
        run_steps(core, x, [12])
        assert len(calls) == 5
    core.train()
    core(x).sum().backward()  # with gradients on, the filter is rebuilt and differentiable
    assert core.blocks[0].mixer.filter.mlp[0].weight.grad is not None


@torch.no_grad()
def test_step_equals_forward_up_to_max_len():
    """Token by token up to a history as long as the filter, for order 2 and order 3."""
    for order in (2, 3):
        core = make_core(max_len=16, order=order)
        x = torch.randn(2, 16, D)
        y_step, state = run_steps(core, x, [3] + [1] * 13)
        torch.testing.assert_close(y_step, core(x), atol=1e-4, rtol=0)
        assert state[0].history[0].shape == (16, D, 2) and state[0].length == 16
        assert state[0].short.shape == (2, 2, (order + 1) * D)


@torch.no_grad()
def test_decoding_writes_into_the_history_without_reallocating_it():
    core = make_core(max_len=16)
    state = core.init_state(2, "cpu")
    buffers = [b.data_ptr() for layer in state for b in layer.history]
    for _ in range(4):
        _, state = core.step(torch.randn(2, 1, D), state)
    assert [b.data_ptr() for layer in state for b in layer.history] == buffers
    assert all(layer.length == 4 for layer in state)


@torch.no_grad()
def test_too_long_input_raises():
    core = make_core(max_len=16)
    with pytest.raises(ValueError, match="max_len"):
        core(torch.randn(1, 17, D))
    _, state = run_steps(core, torch.randn(1, 16, D), [16])
    with pytest.raises(ValueError, match="max_len"):
        core.step(torch.randn(1, 1, D), state)
