"""Every SimpleRNN variant computes the same function as the batch-first loop, in both forms."""
import pytest
import torch

from experiments.lm.simple_rnn import VARIANTS, SimpleRNNCore
from trajectory.models.cores import CoreConfig

B, T, D = 3, 21, 16
ATOL = 1e-5


def make(variant: str, reference: SimpleRNNCore | None = None) -> SimpleRNNCore:
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=D, n_layers=2, n_heads=2, max_len=64, dropout=0.0)
    core = SimpleRNNCore(cfg, SimpleRNNCore.Options(variant=variant, d_key=8, d_value=12, mlp_ratio=2))
    if reference is not None:
        core.load_state_dict(reference.state_dict())
    return core


def outputs_and_grads(core, x, resets):
    x = x.clone().requires_grad_(True)
    y = core(x, resets)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {name: p.grad.clone() for name, p in core.named_parameters()}
    return y.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_the_simple_loop_in_outputs_and_gradients(variant):
    reference = make("simple")
    torch.manual_seed(1)
    x = torch.randn(B, T, D)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[1, 9] = resets[2, 1] = True
    y_ref, dx_ref, g_ref = outputs_and_grads(reference, x, resets)
    y, dx, g = outputs_and_grads(make(variant, reference), x, resets)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=ATOL, rtol=1e-5)
    assert g.keys() == g_ref.keys()
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-4, rtol=1e-4, msg=name)
    assert y.abs().max() > 0.1 and dx.abs().max() > 1e-3  # a real signal, not all zeros


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_step_form_equals_parallel_form_in_uneven_chunks(variant):
    core = make(variant).eval()
    x = torch.randn(B, T, D)
    state = core.init_state(B, "cpu")
    outs, t = [], 0
    for size in (1, 6, 1, 4, 9):
        y, state = core.step(x[:, t:t + size], state)
        outs.append(y)
        t += size
    torch.testing.assert_close(torch.cat(outs, dim=1), core(x), atol=1e-4, rtol=0)


@torch.no_grad()
def test_a_reset_cuts_the_state():
    core = make("kvout").eval()
    x = torch.randn(2, T, D)
    x[1, 10:] = x[0, 10:]  # same suffix, different prefix
    resets = torch.zeros(2, T, dtype=torch.bool)
    resets[:, 10] = True
    y = core(x, resets)
    torch.testing.assert_close(y[0, 10:], y[1, 10:], atol=1e-5, rtol=0)
    assert (core(x)[0, 10:] - core(x)[1, 10:]).abs().max() > 1e-3  # without the reset they differ


def test_unknown_variant_lists_the_choices():
    with pytest.raises(ValueError, match="scan"):
        make("nope")
