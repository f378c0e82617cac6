"""S5-specific checks: HiPPO-N initialisation, step sizes, conjugate symmetry, scan == recurrence."""
import math

import pytest
import torch

from trajectory.models.cores.base import CoreConfig
from trajectory.models.cores.s5 import S5Core, hippo_n, hippo_n_eigenbasis
from trajectory.models.ops.scan import linear_scan_ref

D = 16


def make_core(**options) -> S5Core:
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=D, n_layers=2, n_heads=2, max_len=64, dropout=0.0)
    return S5Core(cfg, S5Core.Options(**options)).eval()


def test_hippo_n_is_normal_part_of_legs():
    A = hippo_n(6)
    S = A + 0.5 * torch.eye(6, dtype=A.dtype)
    torch.testing.assert_close(S, -S.T)  # A = -I/2 + skew-symmetric
    assert A[3, 1] == pytest.approx(-0.5 * math.sqrt(7 * 3))  # LegS -sqrt(2n+1)sqrt(2k+1), halved


@pytest.mark.parametrize("n", [4, 16])
def test_eigenbasis_reconstructs_hippo_n(n):
    lam, V = hippo_n_eigenbasis(n)
    assert lam.shape == (n // 2,) and V.shape == (n, n // 2)
    assert torch.all(lam.imag > 0)  # one of each conjugate pair
    lam_full = torch.cat([lam, lam.conj()])
    V_full = torch.cat([V, V.conj()], dim=1)
    A = V_full @ torch.diag(lam_full) @ V_full.conj().T
    torch.testing.assert_close(A.real, hippo_n(n))
    assert A.imag.abs().max() < 1e-10


@pytest.mark.parametrize("blocks", [1, 4])
def test_init_is_stable_and_steps_in_range(blocks):
    ssm = make_core(state_dim=32, blocks=blocks).blocks[0].ssm
    lam = ssm.eigenvalues()
    assert lam.shape == (16,)
    assert torch.all(lam.real < 0)
    torch.testing.assert_close(lam.real, torch.full((16,), -0.5))
    assert torch.unique(lam.imag).numel() == 16 // blocks  # J copies of one block's spectrum
    step = ssm.log_step.exp()
    assert torch.all(step >= 1e-3) and torch.all(step <= 1e-1)
    assert step.max() / step.min() > 5  # spread log-uniformly, not a constant
    lam_bar, B_bar = ssm.discretize()
    torch.testing.assert_close(lam_bar, torch.exp(lam * step))  # zero-order hold
    torch.testing.assert_close(B_bar, ((lam_bar - 1) / lam)[:, None] * torch.complex(ssm.B_re, ssm.B_im))
    assert torch.all(lam_bar.abs() < 1)


@torch.no_grad()
def test_conjugate_symmetry_gives_the_full_real_system():
    """Running all P states (each kept one plus its conjugate) gives a real output equal to 2 Re."""
    ssm = make_core(state_dim=16).blocks[0].ssm
    u = torch.randn(2, 10, D)
    lam_bar, B_bar = ssm.discretize()
    C = torch.complex(ssm.C_re, ssm.C_im)
    lam_full = torch.cat([lam_bar, lam_bar.conj()])
    B_full, C_full = torch.cat([B_bar, B_bar.conj()]), torch.cat([C, C.conj()], dim=1)
    xs = linear_scan_ref(lam_full, u.to(torch.complex64) @ B_full.T)  # [B, T, P]
    y_full = xs @ C_full.T  # [B, T, H]
    assert y_full.imag.abs().max() < 1e-5
    torch.testing.assert_close(y_full.real + ssm.D * u, ssm(u), atol=1e-5, rtol=0)


@torch.no_grad()
def test_scan_form_equals_recurrence_with_resets():
    ssm = make_core().blocks[0].ssm
    u = torch.randn(3, 17, D)
    resets = torch.rand(3, 17) < 0.2
    y_scan = ssm(u, resets)
    x = torch.zeros(3, 64)  # 32 complex states as real halves
    outs = []
    for t in range(17):
        x = torch.where(resets[:, t, None], torch.zeros_like(x), x)
        y, x = ssm.step(u[:, t:t + 1], x)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), y_scan, atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", ["gelu", "glu", "half_glu"])
@torch.no_grad()
def test_variants_step_equals_forward(activation):
    core = make_core(activation=activation, mlp_ratio=2, blocks=2)
    x = torch.randn(2, 12, D)
    state = core.init_state(2, "cpu")
    assert state[0].dtype == torch.float32 and state[0].shape == (2, 64)  # 32 complex, real halves
    y1, state = core.step(x[:, :5], state)
    y2, _ = core.step(x[:, 5:], state)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), core(x), atol=1e-4, rtol=0)


@torch.no_grad()
def test_real_step_maps_are_the_complex_discretisation():
    """The one-token step's real maps hold Lambda_bar, B_bar and 2 C~ exactly as discretize() gives
    them, with clipped eigenvalues too."""
    ssm = make_core(state_dim=16).blocks[0].ssm
    ssm.lambda_re.data[:3] = torch.tensor([0.2, -2.0, 1e-6])  # clipped to -1e-4 where positive
    decay, w_in, w_out = ssm.real_step_maps()
    lam_bar, B_bar = ssm.discretize()
    torch.testing.assert_close(torch.complex(decay[0], decay[1]), lam_bar)
    torch.testing.assert_close(torch.complex(w_in[:8], w_in[8:]), B_bar, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_out, torch.cat([2 * ssm.C_re, -2 * ssm.C_im], dim=1))


@torch.no_grad()
def test_frozen_step_equals_the_live_step_and_the_parallel_form():
    core = make_core(activation="half_glu", mlp_ratio=2)
    x = torch.randn(3, 6, D)
    live, state = [], core.init_state(3, "cpu")
    for t in range(6):
        y, state = core.step(x[:, t:t + 1], state)
        live.append(y)
    core.freeze_step()
    core.freeze_step()  # idempotent
    assert all(isinstance(b.ssm.step_in, torch.nn.Linear) for b in core.blocks)
    frozen, state = [], core.init_state(3, "cpu")
    for t in range(6):
        y, state = core.step(x[:, t:t + 1], state)
        frozen.append(y)
    torch.testing.assert_close(torch.cat(frozen, 1), torch.cat(live, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(frozen, 1), core(x), atol=1e-5, rtol=0)


def test_planning_steps_follow_a_training_step():
    """The one-token maps kept between no-grad steps are rebuilt once an optimizer changed the
    parameters, and the step form still equals the parallel form."""
    core = make_core()
    x = torch.randn(2, 4, D)

    def stepped():
        with torch.no_grad():
            state, outs = core.init_state(2, "cpu"), []
            for t in range(4):
                y, state = core.step(x[:, t:t + 1], state)
                outs.append(y)
            return torch.cat(outs, 1)
    before = stepped()
    optimizer = torch.optim.SGD(core.parameters(), lr=0.5)
    core(x).square().sum().backward()
    optimizer.step()
    after = stepped()
    assert (after - before).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(after, core(x), atol=1e-5, rtol=0)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="state_dim"):
        make_core(state_dim=30, blocks=4)
    with pytest.raises(ValueError, match="activation"):
        make_core(activation="relu")
