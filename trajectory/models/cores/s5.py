"""S5 core (Smith, Warrington & Linderman, 2023, "Simplified State Space Layers for Sequence Modeling").

One multi-input multi-output SSM per layer, diagonalised (Sec. 3):

    x_t = Lambda_bar * x_{t-1} + B_bar u_t,      y_t = 2 Re(C~ x_t) + D * u_t

* Lambda, V: eigen-decomposition of HiPPO-N, the normal part of HiPPO-LegS (Sec. 4.1, App. B),
  optionally as J identical blocks (block-diagonal V, Sec. 4.1 "J blocks").
* B~ = V^-1 B and C~ = C V: B and C drawn in the original basis and projected (Sec. 3.2).
* Conjugate symmetry: the eigenvalues of a real matrix come in conjugate pairs, so only P/2 of them
  are kept and the output is 2 Re(C~ x) (Sec. 4.3 / App. D).
* Zero-order hold with a learnable step per state (Sec. 4.3): Lambda_bar = exp(Lambda Delta),
  B_bar = (Lambda_bar - 1) / Lambda * B~, log Delta initialised uniformly in [log dt_min, log dt_max].

Parallel form: the reset-aware associative scan of ``ops/scan.py`` (Sec. 2.2 / App. H); packed
episodes cut the state at a reset. Step form: the scan from the carried state for a chunk, and for
one token the recurrence in real arithmetic (the state as its real and imaginary halves, ``[B, P]``;
``B_bar`` and ``2 C~`` as two real matrices), so that a compiled planning step is one real graph
and its two projections are plain linear maps int8 can take (:meth:`S5SSM.freeze_step`). The SSM
runs in its parameters' dtype (fp32 -> complex64 inside the scan), with autocast off.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trajectory.models.cores.base import CoreConfig, SequenceCore, State
from trajectory.models.cores.options import S5Options
from trajectory.models.ops.scan import linear_scan
from trajectory.models.ops.scopes import op_group

Tensor = torch.Tensor


def hippo_n(n: int) -> Tensor:
    """The normal part of the HiPPO-LegS matrix, ``[n, n]`` float64: ``A_LegS + p p^T`` with
    ``p_i = sqrt(i + 1/2)``, which equals ``-I/2 + S`` for a skew-symmetric ``S``."""
    i = torch.arange(n, dtype=torch.float64)
    q = torch.sqrt(2 * i + 1)
    legs = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(i + 1)  # HiPPO-LegS
    p = torch.sqrt(i + 0.5)
    return legs + p[:, None] * p[None, :]


def hippo_n_eigenbasis(n: int) -> tuple[Tensor, Tensor]:
    """Half of the eigenpairs of HiPPO-N (one of each conjugate pair): ``Lambda [n/2]``, ``V [n, n/2]``.

    ``S = A + I/2`` is real skew-symmetric, so ``-i S`` is Hermitian: its eigenvectors are
    orthonormal and its eigenvalues ``w`` real, giving ``A = V diag(-1/2 + i w) V^H``.
    """
    if n % 2:
        raise ValueError(f"HiPPO-N block size must be even for conjugate symmetry, got {n}")
    skew = hippo_n(n) + 0.5 * torch.eye(n, dtype=torch.float64)
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # ascending, in +/- pairs
    keep = slice(n // 2, n)  # the positive frequencies; their conjugates are the negative ones
    lam = torch.complex(torch.full((n // 2,), -0.5, dtype=torch.float64), w[keep])
    return lam, V[:, keep]


class S5SSM(nn.Module):
    """The diagonal complex SSM of one S5 layer: ``[B, T, H] -> [B, T, H]``."""

    def __init__(self, d: int, opt: S5Core.Options):
        super().__init__()
        P, J = opt.state_dim, opt.blocks
        if P % (2 * J):
            raise ValueError(f"s5: state_dim ({P}) must be a multiple of 2 * blocks ({2 * J})")
        lam_block, v_block = hippo_n_eigenbasis(P // J)  # [P/2J], [P/J, P/2J]
        lam = lam_block.repeat(J)  # [P/2]
        V = torch.block_diag(*[v_block] * J)  # [P, P/2]
        B = torch.randn(P, d, dtype=torch.float64) / math.sqrt(d)  # lecun normal
        C = torch.randn(d, P, dtype=torch.float64) / math.sqrt(P)
        B_t = V.conj().T @ B.to(V.dtype)  # [P/2, H]: V^-1 B restricted to the kept eigenvalues
        C_t = C.to(V.dtype) @ V  # [H, P/2]
        self.clip_eigs = opt.clip_eigs
        self.lambda_re = nn.Parameter(lam.real.float())  # [P/2]
        self.lambda_im = nn.Parameter(lam.imag.float())
        self.B_re, self.B_im = nn.Parameter(B_t.real.float()), nn.Parameter(B_t.imag.float())
        self.C_re, self.C_im = nn.Parameter(C_t.real.float()), nn.Parameter(C_t.imag.float())
        self.D = nn.Parameter(torch.randn(d))  # feed-through
        log_lo, log_hi = math.log(opt.dt_min), math.log(opt.dt_max)
        self.log_step = nn.Parameter(torch.rand(P // 2) * (log_hi - log_lo) + log_lo)  # [P/2]

    def eigenvalues(self) -> Tensor:
        """Continuous-time ``Lambda [P/2]``; the real part is kept negative (stable) when clipping."""
        re = self.lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.lambda_re
        return torch.complex(re, self.lambda_im)

    def discretize(self) -> tuple[Tensor, Tensor]:
        """Zero-order hold: ``Lambda_bar [P/2]`` and ``B_bar [P/2, H]`` (complex)."""
        lam = self.eigenvalues()
        lam_bar = torch.exp(lam * self.log_step.exp())
        B_bar = ((lam_bar - 1) / lam)[:, None] * torch.complex(self.B_re, self.B_im)
        return lam_bar, B_bar

    def _inputs(self, u: Tensor, B_bar: Tensor) -> Tensor:
        # real u times complex B_bar as two real matmuls
        return torch.complex(u @ B_bar.real.T, u @ B_bar.imag.T)  # [B, T, P/2]

    def _outputs(self, xs: Tensor, u: Tensor) -> Tensor:
        # 2 Re(C~ x) = 2 (Re C~ Re x - Im C~ Im x)
        return 2 * (xs.real @ self.C_re.T - xs.imag @ self.C_im.T) + self.D * u  # [B, T, H]

    def forward(self, u: Tensor, resets: Tensor | None = None) -> Tensor:
        """``u [B, T, H]`` (any float dtype) -> ``y [B, T, H]`` in the parameters' dtype."""
        u = u.to(self.D.dtype)
        with torch.autocast(u.device.type, enabled=False):  # complex math has no half precision
            lam_bar, B_bar = self.discretize()
            bu = self._inputs(u, B_bar)
            with op_group("scan"):
                xs = linear_scan(lam_bar, bu, resets)  # [B, T, P/2]
            return self._outputs(xs, u)

    def real_step_maps(self) -> tuple[Tensor, Tensor, Tensor]:
        """The one-token recurrence in real arithmetic: ``decay [2, P/2]`` (Re and Im of Lambda_bar),
        ``input map [P, H]`` (Re B_bar over Im B_bar) and ``output map [H, P]`` (2 Re C~, -2 Im C~),
        so that ``y = output map @ [Re x; Im x] + D u``. No complex op: a compiler keeps it in one
        graph, where ``discretize`` would cut it."""
        lam_re = self.lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.lambda_re
        step = self.log_step.exp()
        magnitude, angle = torch.exp(lam_re * step), self.lambda_im * step
        bar_re, bar_im = magnitude * torch.cos(angle), magnitude * torch.sin(angle)
        # (Lambda_bar - 1) / Lambda, the zero-order hold's input gain
        norm = lam_re ** 2 + self.lambda_im ** 2
        gain_re = ((bar_re - 1) * lam_re + bar_im * self.lambda_im) / norm
        gain_im = (bar_im * lam_re - (bar_re - 1) * self.lambda_im) / norm
        b_re = gain_re[:, None] * self.B_re - gain_im[:, None] * self.B_im
        b_im = gain_re[:, None] * self.B_im + gain_im[:, None] * self.B_re
        return (torch.stack([bar_re, bar_im]), torch.cat([b_re, b_im]),
                torch.cat([2 * self.C_re, -2 * self.C_im], dim=1))

    def _current_step_maps(self) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`real_step_maps`, computed once per parameter values when no gradient is taken
        (planning steps token by token: the maps would otherwise be rebuilt at every token); a
        parameter changed in place (an optimizer step, a load) bumps its version and rebuilds them."""
        if torch.is_grad_enabled():
            return self.real_step_maps()
        key = tuple((p._version, p.data_ptr()) for p in self.parameters())
        cached = self.__dict__.get("_step_maps_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.real_step_maps())
            self.__dict__["_step_maps_cache"] = cached
        return cached[1]

    def freeze_step(self) -> None:
        """Hold the one-token step's maps as a buffer and two ``nn.Linear`` maps, computed once, for
        a model that is done training (a planning copy): each step then skips the discretisation,
        and int8 quantization of the core's linear maps covers its projections. A no-op when frozen."""
        if hasattr(self, "step_in"):
            return
        with torch.no_grad():
            decay, w_in, w_out = self.real_step_maps()
        self.register_buffer("step_decay", decay.detach().clone(), persistent=False)
        self.step_in = nn.Linear(w_in.shape[1], w_in.shape[0], bias=False)
        self.step_out = nn.Linear(w_out.shape[1], w_out.shape[0], bias=False)
        self.step_in.weight = nn.Parameter(w_in.detach().clone(), requires_grad=False)
        self.step_out.weight = nn.Parameter(w_out.detach().clone(), requires_grad=False)

    def _one_token(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``u [B, H]``, state ``x [B, P]`` (real halves) -> (``y [B, H]``, next state)."""
        frozen = hasattr(self, "step_in")
        if frozen:
            decay, bu = self.step_decay, self.step_in(u)
        else:
            decay, w_in, w_out = self._current_step_maps()
            bu = F.linear(u, w_in)
        x_re, x_im = x.chunk(2, dim=-1)
        bu_re, bu_im = bu.chunk(2, dim=-1)
        with op_group("scan"):  # x_t = Lambda_bar x_{t-1} + B_bar u_t, as real and imaginary parts
            x = torch.cat([decay[0] * x_re - decay[1] * x_im + bu_re,
                           decay[0] * x_im + decay[1] * x_re + bu_im], dim=-1)
        y = self.step_out(x) if frozen else F.linear(x, w_out)
        return y + self.D * u, x

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``u [B, t, H]``, carried state ``x [B, P]`` (the P/2 complex states' real parts, then their
        imaginary parts) -> (``y [B, t, H]``, last state)."""
        u = u.to(self.D.dtype)
        with torch.autocast(u.device.type, enabled=False):
            if u.shape[1] == 1:
                y, x = self._one_token(u[:, 0], x)
                return y.unsqueeze(1), x
            lam_bar, B_bar = self.discretize()
            bu = self._inputs(u, B_bar)  # [B, t, P/2]
            x_re, x_im = x.chunk(2, dim=-1)
            with op_group("scan"):
                xs = linear_scan(lam_bar, bu, h0=torch.complex(x_re, x_im))
            last = xs[:, -1]
            return self._outputs(xs, u), torch.cat([last.real, last.imag], dim=-1)


class S5Block(nn.Module):
    """Pre-norm residual S5 layer: ``x + Dropout(Act(SSM(LN(x))))``, then an optional MLP block."""

    def __init__(self, cfg: CoreConfig, opt: S5Core.Options):
        super().__init__()
        d = cfg.d_model
        if opt.activation not in ("gelu", "glu", "half_glu"):
            raise ValueError(f"s5: activation must be gelu, glu or half_glu, got '{opt.activation}'")
        self.activation = opt.activation
        self.norm = nn.LayerNorm(d)
        self.ssm = S5SSM(d, opt)
        if opt.activation == "glu":
            self.gate = nn.Linear(d, 2 * d)
        elif opt.activation == "half_glu":
            self.gate = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.mlp = None
        if opt.mlp_ratio > 0:
            self.norm_mlp = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, opt.mlp_ratio * d), nn.GELU(),
                                     nn.Linear(opt.mlp_ratio * d, d))

    def _activate(self, y: Tensor) -> Tensor:
        y = F.gelu(y)
        if self.activation == "glu":  # full GLU: a second projection gates the first
            return F.glu(self.gate(y), dim=-1)
        if self.activation == "half_glu":  # y * sigmoid(W y): the paper's "weighted sigmoid gate"
            return y * torch.sigmoid(self.gate(y))
        return y

    def _finish(self, x: Tensor, y: Tensor) -> Tensor:
        x = x + self.drop(self._activate(y.to(x.dtype)))
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm_mlp(x)))
        return x

    def forward(self, x: Tensor, resets: Tensor | None = None) -> Tensor:
        return self._finish(x, self.ssm(self.norm(x), resets))  # x: [B, T, D]

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self.ssm.step(self.norm(x), state)
        return self._finish(x, y), state


class S5Core(SequenceCore):
    """A stack of S5 layers; honours resets (packed episodes) by cutting the scan's carry."""

    supports_resets = True
    float_ops = {
        "complex diagonal scan (x_t = Lambda_bar x_{t-1} + B_bar u_t)": "complex arithmetic; no "
        "int8 kernel, and the state accumulates rounding error over time",
        "complex projections B_bar, C (dynamic and static)": "complex matrices recomputed from the "
        "discretization, with no complex int8 matmul; quantize=compiled freezes the one-token step's "
        "as two real linear maps and takes them to int8",
    }

    Options = S5Options

    def __init__(self, cfg: CoreConfig, options: Options | None = None):
        super().__init__(cfg, options)
        self.blocks = nn.ModuleList(S5Block(cfg, self.options) for _ in range(cfg.n_layers))

    def forward(self, x: Tensor, resets: Tensor | None = None) -> Tensor:
        self.check_resets(resets)
        for block in self.blocks:
            x = block(x, resets)  # [B, T, D]
        return x

    def init_state(self, batch_size: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32) -> State:
        # the state follows the SSM's parameters (fp32), not the activations' dtype: P/2 complex
        # states as their real parts, then their imaginary parts
        return [torch.zeros(batch_size, self.options.state_dim, dtype=self.blocks[0].ssm.D.dtype,
                            device=device) for _ in self.blocks]

    def freeze_step(self) -> None:
        """See :meth:`S5SSM.freeze_step` (planning copies only)."""
        for block in self.blocks:
            block.ssm.freeze_step()

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block.step(x, layer_state)  # x: [B, t, D]
            new_state.append(layer_state)
        return x, new_state
