"""The options of every sequence core (``model.core_options``), importable without torch.

Each core class points its ``Options`` at one of these, and :mod:`trajectory.models.cores` checks a
config against them before torch is imported, so a mistyped option is reported at once.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GPTOptions:
    """Options of GPT (Radford et al., 2019) blocks."""

    mlp_ratio: int = 4  # MLP hidden width / d_model (GPT-2: 4)
    bias: bool = True  # biases in the linear layers and LayerNorms


@dataclass
class HyenaOptions:
    """Options of Hyena operators (Poli et al., 2023)."""

    order: int = 2  # N: gates and long convolutions per operator (Def. 3.1)
    short_kernel: int = 3  # taps of the causal depthwise conv on the projections
    filter_emb_dim: int = 17  # positional features of the filter MLP: t + 2K sinusoids (odd)
    filter_width: int = 64  # hidden width of the filter MLP
    filter_sine_freq: float = 1.0  # initial frequency w of the sine activations
    decay_fast_pct: float = 0.3  # fastest window reaches decay_target at this fraction of L
    decay_slow_pct: float = 1.5  # slowest window reaches decay_target at this multiple of L
    decay_target: float = 1e-2  # window value that defines the decay rates above
    mlp_ratio: int = 4  # hidden width of the block MLP, in multiples of d_model


@dataclass
class RetNetOptions:
    """Options of Retention (Sun et al., 2023)."""

    chunk_size: int = 0  # tokens per chunk of the chunkwise form (Eq. 7); 0 = fully parallel
    value_factor: int = 2  # value and gate width = value_factor * d_model (the paper's 2)
    ffn_ratio: float = 2.0  # SwiGLU hidden width / d_model (the paper's FFN width is 2d)
    rope_base: float = 10000.0  # theta_i = rope_base^(-2i/d_k) of the rotation Theta


@dataclass
class S5Options:
    """Options of S5 layers (Smith et al., 2023)."""

    state_dim: int = 64  # P: states of the SSM before conjugate symmetry (P/2 are stored)
    blocks: int = 1  # J: HiPPO-N blocks on the diagonal of the initial state matrix
    dt_min: float = 1e-3  # smallest initial step size Delta
    dt_max: float = 1e-1  # largest initial step size Delta
    clip_eigs: bool = True  # keep Re(Lambda) <= -1e-4 so the recurrence stays stable
    activation: str = "half_glu"  # after the SSM: gelu | glu | half_glu
    mlp_ratio: int = 0  # width of an extra pre-norm MLP block per layer (0: none, as the paper)
