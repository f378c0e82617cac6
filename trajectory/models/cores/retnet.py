"""RetNet core: multi-scale retention (Sun et al., 2023, "Retentive Network", arXiv:2307.08621).

    x [B, T, D] -> n_layers x (x + MSR(LN(x)); x + SwiGLU(LN(x))) -> [B, T, D]          Eq. (9)
    MSR(X) = (swish(X W_G) * GroupNorm_h(Retention_h(X))) W_O,  gamma_h = 1 - 2^(-5-h)   Eq. (8)

Retention of one head, with q, k rotated by their positions (Eq. 5: Q = (X W_Q) * Theta,
K = (X W_K) * conj(Theta), Theta_n = e^{i n theta}):

    o_n = sum_{m <= n} gamma^(n-m) (q_n . k_m) v_m                     parallel form, Eq. (5)
    S_n = gamma S_{n-1} + k_n^T v_n,   o_n = q_n S_n                     recurrent form, Eq. (6)
    chunk of C: inner parallel + (q_j S) gamma^(j+1); S <- gamma^C S + sum_j gamma^(C-1-j) k_j^T v_j
                                                                         chunkwise form, Eq. (7)

One function, :func:`retention_chunk`, computes Eq. (7) for one chunk; the parallel form is one
chunk of the whole sequence and the recurrent form is chunks of one token, so the forms share every
operation that could make them drift apart.

Positions: plain rotary (Eq. 5's Theta with theta_i = base^(-2i/d_k)), without xPos's per-dimension
exponential scaling: in RetNet that decay is the scalar gamma^(n-m) of D, and xPos's zeta^n factors
overflow in long step-mode runs.

Score normalization (Sec. 2.2), applied identically in every form: q k^T / sqrt(d_k);
D~_nm = D_nm / sqrt(sum_i D_ni); R~_nm = R_nm / max(|sum_i R_ni|, 1). The row sum sum_i D_ni =
(1 - gamma^(p+1)) / (1 - gamma) depends only on the token's position p in its episode, so it is a
per-row factor applied after the sum. The row sum sum_i R_ni is carried exactly by appending a
constant-1 column to V (the state holds it as its last value column). Both are per-row positive
factors that GroupNorm would absorb but for its eps; computing them exactly keeps every form equal.

Packed episodes (``resets``): the decay is zeroed across a reset (in the D mask, and for the carried
state), and positions restart at 0, so each episode is computed as if it were run alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trajectory.models.cores.base import CoreConfig, SequenceCore, State
from trajectory.models.cores.options import RetNetOptions
from trajectory.models.ops.scopes import op_group


def retention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None,
                    log_gamma: torch.Tensor, resets: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (7) for one chunk of C tokens, unnormalized.

    q, k [B, H, C, dk]; v [B, H, C, dv]; state [B, H, dk, dv] (None = zero); log_gamma [H];
    resets bool [B, C] or None. Returns o [B, H, C, dv] and the state after the chunk.
    """
    C = q.shape[2]
    idx = torch.arange(C, device=q.device, dtype=torch.float32)  # decay factors in fp32, then cast
    lg = log_gamma.float()[:, None]  # [H, 1]
    lag = idx[:, None] - idx[None, :]  # [C, C] n - m
    decay = torch.exp(lag.clamp(min=0) * lg[..., None]) * (lag >= 0)  # [H, C, C] D of Eq. (5)
    from_state = torch.exp((idx + 1) * lg)  # [H, C] gamma^(j+1): decay of the carried state
    to_state = torch.exp((C - 1 - idx) * lg)  # [H, C] gamma^(C-1-j): decay into the next state
    carry = torch.exp(C * lg[:, 0])  # [H] gamma^C
    if resets is not None:
        # Episode id within the chunk; 0 is the episode that continues from the carried state.
        seg = resets.long().cumsum(dim=1)  # [B, C]
        decay = decay * (seg[:, :, None] == seg[:, None, :])[:, None]  # [B, H, C, C]
        from_state = from_state * (seg == 0)[:, None]  # [B, H, C]
        to_state = to_state * (seg == seg[:, -1:])[:, None]  # [B, H, C]
        carry = carry * (seg[:, -1] == 0)[:, None]  # [B, H]
    decay, from_state, to_state, carry = (
        z.to(q.dtype) for z in (decay, from_state, to_state, carry))
    o = (q @ k.transpose(-1, -2) * decay) @ v  # [B, H, C, dv] inner-chunk part
    new_state = (k * to_state[..., None]).transpose(-1, -2) @ v  # [B, H, dk, dv]
    if state is not None:
        o = o + (q @ state) * from_state[..., None]  # cross-chunk part
        new_state = new_state + state * carry[..., None, None]
    return o, new_state


def retention_token(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor,
                    log_gamma: torch.Tensor, undecayed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (6) for one token, S_n = gamma S_{n-1} + k^T v and o = q S_n (which equals Eq. (7) with
    C = 1), with the state's decay deferred: ``state`` holds S / gamma^m, m = ``undecayed``
    counting this token, so the update is one multiply-add into it in place,
    state += gamma^(-m) k^T v, and o = gamma^m q state.

    Decoding is bound by the state's memory traffic; deferring the decay saves one of three passes
    over it per token, and the rank-one update as a broadcast multiply-add is 2x faster here than
    a batched GEMM of B * H rank-one products. The caller applies the decay before gamma^(-m)
    grows large (:meth:`RetNetCore.step`).

    q, k [B, H, 1, dk]; v [B, H, 1, dv]; state [B, H, dk, dv] (consumed). Returns o [B, H, 1, dv]
    and the state.
    """
    lg = log_gamma.float().view(1, -1, 1, 1) * undecayed
    if not state.is_contiguous():
        state = state.contiguous()
    state.addcmul_(k.transpose(-1, -2) * torch.exp(-lg).to(k.dtype), v)
    return (q * torch.exp(lg).to(q.dtype)) @ state, state


def apply_decay(state: torch.Tensor, log_gamma: torch.Tensor, tokens: int) -> torch.Tensor:
    """The state [B, H, dk, dv] times gamma^tokens per head, in place (see :func:`retention_token`)."""
    if not state.is_contiguous():
        state = state.contiguous()
    return state.mul_(torch.exp(log_gamma.float() * tokens).to(state.dtype).view(1, -1, 1, 1))


def retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gamma: torch.Tensor,
              positions: torch.Tensor, resets: torch.Tensor | None = None,
              state: torch.Tensor | None = None, chunk_size: int = 0, undecayed: int = 0,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized retention (Sec. 2.2), chunkwise with ``chunk_size`` tokens (0 = one chunk), or
    for ``undecayed`` > 0 one token into a state whose decay is deferred (:func:`retention_token`).

    q, k [B, H, T, dk] (rotated); v [B, H, T, dv]; positions [B or 1, T] within the episode;
    state [B, H, dk, dv + 1] or None. Returns o [B, H, T, dv] and the new state.
    """
    T = q.shape[2]
    q = q * q.shape[-1] ** -0.5
    v = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)  # [B, H, T, dv + 1]
    if undecayed:
        o, state = retention_token(q, k, v, state, log_gamma, undecayed)
    else:
        size = chunk_size if chunk_size > 0 else T
        outs = []
        for s in range(0, T, size):
            e = min(s + size, T)
            o, state = retention_chunk(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], state, log_gamma,
                                       None if resets is None else resets[:, s:e])
            outs.append(o)
        o = torch.cat(outs, dim=2)  # [B, H, T, dv + 1]
    lg = log_gamma.float()[None, :, None]  # [1, H, 1]
    decay_sum = torch.expm1((positions.float()[:, None, :] + 1) * lg) / torch.expm1(lg)  # [B, H, T]
    o = o * decay_sum.rsqrt().to(o.dtype)[..., None]  # D~ row normalization
    return o[..., :-1] / o[..., -1:].abs().clamp(min=1.0), state  # R~ row normalization


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, H, T, dk] (halves paired); cos, sin [B, 1, T, dk / 2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class MultiScaleRetention(nn.Module):
    """Gated multi-scale retention, Eq. (8); head h decays with gamma_h = 1 - 2^(-5-h)."""

    def __init__(self, cfg: CoreConfig, options: RetNetCore.Options):
        super().__init__()
        d, H = cfg.d_model, cfg.n_heads
        self.n_heads, self.dk, self.dv = H, d // H, options.value_factor * d // H
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, H * self.dv, bias=False)
        self.g = nn.Linear(d, H * self.dv, bias=False)
        self.out = nn.Linear(H * self.dv, d, bias=False)
        self.norm = nn.GroupNorm(H, H * self.dv)  # one group per head
        # Small Xavier gains, as in the authors' released code: learns noticeably faster than
        # PyTorch's default here (no softmax bounds the retention scores).
        for proj in (self.q, self.k, self.v, self.g):
            nn.init.xavier_uniform_(proj.weight, gain=2 ** -2.5)
        nn.init.xavier_uniform_(self.out.weight, gain=2 ** -1)
        self.rope_base = options.rope_base

    # gamma and theta are rebuilt in fp32 on each call (cheap), not kept as buffers, so that casting
    # the module to half precision cannot round them.
    def gamma(self) -> torch.Tensor:
        """[H] per-head decay gamma_h = 1 - 2^(-5-h), Eq. (8), in float64 (for inspection)."""
        return 1.0 - 2.0 ** (-5.0 - torch.arange(self.n_heads, dtype=torch.float64))

    def log_gamma(self, device: torch.device | str) -> torch.Tensor:
        """[H] log gamma_h in fp32: 2^(-5-h) is exact and log1p keeps full precision."""
        h = torch.arange(self.n_heads, device=device, dtype=torch.float32)
        return torch.log1p(-torch.exp2(-5.0 - h))

    def theta(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[dk / 2] rotation frequencies theta_i = rope_base^(-2i/dk) of Eq. (5)."""
        i2 = torch.arange(0, self.dk, 2, device=device, dtype=torch.float32)
        return self.rope_base ** (-i2 / self.dk)

    def group_norm(self, o: torch.Tensor) -> torch.Tensor:
        """``self.norm`` (GroupNorm, one group per head) of o [B, T, H, dv] -> [B, T, H * dv],
        computed as a layer norm over each head's values: the same function in one kernel, without
        GroupNorm's [B * T, C] reshapes, and faster when decoding."""
        H, dv = self.n_heads, self.dv
        y = F.layer_norm(o, (dv,), eps=self.norm.eps)
        return (y * self.norm.weight.view(H, dv) + self.norm.bias.view(H, dv)).flatten(-2)

    def token_projection(self, position: int, undecayed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`build_token_projection`, kept for the next plans: decoding steps revisit the
        same positions and deferred decays at every env step once the context is full. The cache
        is keyed by the weights' identities and versions, so changed weights are never read stale;
        a compiled step builds the projection in its graph instead."""
        if torch.compiler.is_compiling():
            return self.build_token_projection(position, undecayed)
        weights = (self.q.weight, self.k.weight, self.v.weight, self.g.weight)
        key = (position, undecayed, *((w.data_ptr(), w._version, w.dtype, w.device) for w in weights))
        cache = self.__dict__.setdefault("_token_projections", {})  # not a parameter or buffer
        if key not in cache:
            if len(cache) >= 1024:  # another context length or new weights: start again
                cache.clear()
            cache[key] = self.build_token_projection(position, undecayed)
        return cache[key]

    def build_token_projection(self, position: int, undecayed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of one matrix product that maps a token at ``position`` straight to what
        :func:`retention_token` needs: the rotated, scaled query; the rotated key times
        gamma^(-undecayed); the value with its constant-1 column; the gate's pre-activation.

        Everything between the projections and the state is linear in x and the same for every row
        of a decoding step (one position, one deferred decay), so it folds into the weights: the
        rotation by Theta_position, 1/sqrt(d_k), gamma^(+-undecayed) and the D~ row normalization
        1/sqrt(sum_i D_ni). Per decoded token this replaces a dozen elementwise passes over the
        rows by a few over the (d x d) weights."""
        H, dk, dv = self.n_heads, self.dk, self.dv
        w = self.q.weight
        angle = position * self.theta(w.device)  # [dk/2] fp32
        cos, sin = angle.cos(), angle.sin()
        lg = self.log_gamma(w.device)  # [H]
        decay_sum = torch.expm1((position + 1) * lg) / torch.expm1(lg)
        q_scale = dk ** -0.5 * torch.exp(lg * undecayed) * decay_sum.rsqrt()  # [H]
        k_scale = torch.exp(-lg * undecayed)

        def rotated(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # rows of Theta W
            w1, w2 = weight.float().view(H, 2, dk // 2, -1).unbind(1)  # [H, dk/2, D] each
            c, s = cos[:, None], sin[:, None]
            out = torch.cat([w1 * c - w2 * s, w1 * s + w2 * c], dim=1) * scale[:, None, None]
            return out.reshape(H * dk, -1)
        value = torch.cat([self.v.weight.float().view(H, dv, -1),
                           self.v.weight.new_zeros(H, 1, self.v.weight.shape[1]).float()], dim=1)
        weight = torch.cat([rotated(self.q.weight, q_scale), rotated(self.k.weight, k_scale),
                            value.reshape(H * (dv + 1), -1), self.g.weight.float()]).to(w.dtype)
        bias = torch.zeros(weight.shape[0], dtype=w.dtype, device=w.device)
        bias[2 * H * dk:2 * H * dk + H * (dv + 1)].view(H, dv + 1)[:, dv] = 1.0  # the ones column
        return weight, bias

    def decode_token(self, x: torch.Tensor, position: int, state: torch.Tensor,
                     undecayed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row, every row at ``position``, into a state whose decay is deferred
        (``undecayed`` counting this token): the same function as ``forward`` with T = 1, through
        :meth:`token_projection`. x [B, 1, D]; state [B, H, dk, dv + 1] (updated in place)."""
        B = x.shape[0]
        H, dk, dv = self.n_heads, self.dk, self.dv
        if not all(type(m) is nn.Linear for m in (self.q, self.k, self.v, self.g)):
            # int8 projections keep no float weights to fold: the general form does the same
            positions = torch.full((1, 1), position, device=x.device)
            return self.forward(x, positions, None, state, 0, undecayed)
        weight, bias = self.token_projection(position, undecayed)
        z = F.linear(x[:, 0], weight, bias)  # [B, 2 H dk + H (dv + 1) + H dv]
        q, k, v, g = z.split([H * dk, H * dk, H * (dv + 1), H * dv], dim=1)
        with op_group("attention"):
            if not state.is_contiguous():
                state = state.contiguous()
            state.addcmul_(k.reshape(B, H, dk, 1), v.reshape(B, H, 1, dv + 1))
            o = torch.matmul(q.reshape(B, H, 1, dk), state)[:, :, 0]  # [B, H, dv + 1]
            o = o[..., :-1] / o[..., -1:].abs().clamp(min=1.0)  # R~ row normalization
        y = self.group_norm(o)  # [B, H * dv]
        return self.out(F.silu(g) * y)[:, None], state

    def forward(self, x: torch.Tensor, positions: torch.Tensor, resets: torch.Tensor | None,
                state: torch.Tensor | None, chunk_size: int, undecayed: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D]; positions [B or 1, T] within the episode -> y [B, T, D], new state."""
        B, T, _ = x.shape
        H = self.n_heads
        angle = positions.float()[:, None, :, None] * self.theta(x.device)  # [B|1, 1, T, dk/2], fp32
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        q = rotate(self.q(x).view(B, T, H, self.dk).transpose(1, 2), cos, sin)  # [B, H, T, dk]
        k = rotate(self.k(x).view(B, T, H, self.dk).transpose(1, 2), cos, sin)
        v = self.v(x).view(B, T, H, self.dv).transpose(1, 2)  # [B, H, T, dv]
        with op_group("attention"):
            o, state = retention(q, k, v, self.log_gamma(x.device), positions, resets, state, chunk_size,
                                 undecayed)
        y = self.group_norm(o.transpose(1, 2)).view(B, T, H * self.dv)
        return self.out(F.silu(self.g(x)) * y), state


class SwiGLU(nn.Module):
    """GLU feed-forward with a swish gate (Shazeer, 2020): W_2(swish(x W_1) * x W_3)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RetNetBlock(nn.Module):
    """Pre-norm residual block of Eq. (9)."""

    def __init__(self, cfg: CoreConfig, options: RetNetCore.Options):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.retention = MultiScaleRetention(cfg, options)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = SwiGLU(cfg.d_model, int(options.ffn_ratio * cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, resets: torch.Tensor | None,
                state: torch.Tensor | None, chunk_size: int, undecayed: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        y, state = self.retention(self.ln1(x), positions, resets, state, chunk_size, undecayed)
        x = x + self.drop(y)
        return x + self.drop(self.ffn(self.ln2(x))), state

    def decode_token(self, x: torch.Tensor, position: int, state: torch.Tensor,
                     undecayed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for one token per row, all at ``position``, without gradients."""
        y, state = self.retention.decode_token(self.ln1(x), position, state, undecayed)
        x = x + y
        return x + self.ffn(self.ln2(x)), state


class RetNetCore(SequenceCore):
    """RetNet with parallel / chunkwise ``forward`` and a recurrent ``step`` (any chunk length).

    State: per layer S [B, H, dk, dv + 1] (the last column is the decayed key sum that the score
    normalization needs), a token counter shared by all rows, and how many of the last tokens'
    decays S does not hold yet (``undecayed``: the true state is gamma^undecayed S, see
    :func:`retention_token`).
    """

    # Deferred decays are applied every this many decoded tokens, so that gamma^(-undecayed) stays
    # small (at most 7.6, for the fastest-decaying head, gamma = 1 - 2^-5).
    max_undecayed = 64

    supports_resets = True
    float_ops = {
        "retention (decayed QK^T V and the recurrent state update)": "activation x activation "
        "products with per-head decays; no int8 kernel and the state accumulates over time",
        "xPos rotation, group norm, swish gate": "elementwise on float activations",
    }

    Options = RetNetOptions

    def __init__(self, cfg: CoreConfig, options: Options | None = None):
        super().__init__(cfg, options)
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError(f"retnet: d_model ({cfg.d_model}) / n_heads ({cfg.n_heads}) must be an "
                             f"even integer (the rotation pairs dimensions)")
        if self.options.chunk_size < 0:
            raise ValueError(f"retnet: chunk_size must be >= 0, got {self.options.chunk_size}")
        self.blocks = nn.ModuleList(RetNetBlock(cfg, self.options) for _ in range(cfg.n_layers))

    def _run(self, x: torch.Tensor, positions: torch.Tensor, resets: torch.Tensor | None,
             states: list, undecayed: int = 0) -> tuple[torch.Tensor, list]:
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block(x, positions, resets, state, self.options.chunk_size, undecayed)
            new_states.append(state)
        return x, new_states

    def forward(self, x: torch.Tensor, resets: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D]; resets bool [B, T] or None -> [B, T, D]."""
        self.check_resets(resets)
        B, T, _ = x.shape
        idx = torch.arange(T, device=x.device)
        if resets is None:
            positions = idx.expand(B, T)
        else:
            resets = resets.to(x.device)
            positions = idx - torch.where(resets, idx, 0).cummax(dim=1).values  # [B, T] restart at 0
        y, _ = self._run(x, positions, resets, [None] * len(self.blocks))
        return y

    def init_state(self, batch_size: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32) -> State:
        attn = self.blocks[0].retention
        shape = (batch_size, attn.n_heads, attn.dk, attn.dv + 1)
        return {"S": [torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks], "pos": 0,
                "undecayed": 0}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x [B, t, D] following the state's tokens -> y [B, t, D], new state. Without gradients,
        one token at a time updates the state's tensors in place, deferring their decay (the
        state is consumed: branch with select_state); a chunk applies the deferred decay first."""
        B, t, _ = x.shape
        pos, undecayed, S = state["pos"], state["undecayed"], state["S"]
        one_token = t == 1 and not torch.is_grad_enabled()
        if undecayed and (not one_token or undecayed == self.max_undecayed):
            log_gamma = self.blocks[0].retention.log_gamma(x.device)
            S, undecayed = [apply_decay(s, log_gamma, undecayed) for s in S], 0
        undecayed = undecayed + 1 if one_token else 0
        if one_token:
            y, new_states = x, []
            for block, s in zip(self.blocks, S):
                y, s = block.decode_token(y, pos, s, undecayed)
                new_states.append(s)
            return y, {"S": new_states, "pos": pos + t, "undecayed": undecayed}
        positions = (pos + torch.arange(t, device=x.device))[None]  # [1, t]: the same for every row
        y, S = self._run(x, positions, None, S, undecayed)
        return y, {"S": S, "pos": pos + t, "undecayed": undecayed}
