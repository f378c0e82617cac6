"""Hyena core (Poli et al., 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models").

Order-N Hyena operator (Def. 3.1), N = 2 by default:

    (v, x^1, ..., x^N) = ShortConv(Linear(u))            N + 1 projections of width D
    z^1 = v,   z^{n+1}_t = x^n_t * (h^n * z^n)_t          long causal convolution, then a gate
    y = Linear(z^{N+1})

Each long filter is implicit (Sec. 3.3): ``h_t = Window(t) * FFN(PositionalEncoding(t))``, an MLP
with sine activations over sinusoidal features of t, times an exponential decay that differs per
channel. Convolutions run by FFT with a skip term ``D * z`` (Alg. 3). The operator sits in a
pre-norm residual block with an MLP, as in the paper's language models.

Step form: each layer keeps the last ``kernel - 1`` inputs of the short convolution and every input
``z^n`` of the long convolutions so far, in buffers preallocated for the filter length (written in
place: no copy of the history per token), time-major ``[max_len, D, B]``: a new token's inputs land
as one contiguous ``[D, B]`` slab, a new output is per channel the filter's taps times a
``[length, B]`` matrix of contiguous rows (one batched matrix product, O(L * D) per token), and
reordering rows gathers columns of one ``[length * D, B]`` matrix. The filter comes from a cache
built once while gradients are off.

Shared prefix (``branch_state``): a long convolution is linear in its input, so the output at a
position after the prefix is the prefix's contribution plus the suffix's. The branched state
computes the prefix's contribution to every later position once per original row, with one FFT per
long convolution, and keeps per row only the inputs decoded after it: a decoded token then convolves
with the suffix alone, and reordering copies suffixes only. Branching a branched state (a beam
expanded into copies) makes each beam's suffix a middle level: a decoded token's convolution reads
it once per beam for all its copies, and expanding copies nothing; pruning folds it back into
per-row suffixes, the copy it made anyway.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trajectory.models.cores.base import CoreConfig, SequenceCore, stays_grouped
from trajectory.models.cores.options import HyenaOptions
from trajectory.models.cores.states import ConvMiddle, ConvPrefix, HyenaLayerState
from trajectory.models.ops.fftconv import fft_conv
from trajectory.models.ops.scopes import op_group

Tensor = torch.Tensor


def gather_columns(source: Tensor, index: Tensor, out: Tensor) -> None:
    """out[:, j] = source[:, index[j]] for a time-major history [positions * D, rows]: one gather
    with the index broadcast over the rows, which torch spreads over its threads (index_select
    along the last dimension runs on one)."""
    torch.gather(source, 1, index[None].expand(source.shape[0], -1), out=out)


class Sine(nn.Module):
    """``sin(w * x)`` with a learnable frequency per unit (the paper's filter activation)."""

    def __init__(self, width: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((width,), float(freq)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """The long filters of one operator: ``h^n_t = exp(-alpha_c t / L) * FFN(z_t)`` for t < L.

    Features ``z_t = [t / L, cos(2 pi k t / L), sin(2 pi k t / L)]`` for k = 1..K are the truncated
    complex exponential basis of Sec. 3.3. Positions are scaled by the filter length ``L``, not by
    the sequence length, so a prefix of a sequence sees the same filter taps as the whole.
    Decay rates ``alpha_c`` are fixed, spread over channels from slow to fast so that the window
    falls to ``target`` at the end of the filter for the slowest and early for the fastest.
    """

    int8_exempt = True  # computed once from positions and cached: int8 would only lose precision

    def __init__(self, channels: int, length: int, emb_dim: int, width: int, sine_freq: float,
                 fast_pct: float, slow_pct: float, target: float):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"filter_emb_dim must be odd and >= 3, got {emb_dim}")
        self.length = length
        t = torch.arange(length, dtype=torch.float32) / length  # [L] in [0, 1)
        k = torch.arange(1, (emb_dim - 1) // 2 + 1, dtype=torch.float32)  # [K]
        phase = 2 * math.pi * k[None, :] * t[:, None]  # [L, K]: 2 pi k t' / L at position t'
        self.register_buffer("z", torch.cat([t[:, None], phase.cos(), phase.sin()], dim=1),
                             persistent=False)  # [L, emb_dim]
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, width), Sine(width, sine_freq),
            nn.Linear(width, width), Sine(width, sine_freq),
            nn.Linear(width, channels, bias=False),
        )
        rates = torch.linspace(math.log(1 / target) / slow_pct, math.log(1 / target) / fast_pct,
                               channels)  # [C], slow to fast
        self.register_buffer("window", torch.exp(-rates[:, None] * t[None, :]),
                             persistent=False)  # [C, L]

    def forward(self) -> Tensor:
        return self.mlp(self.z).transpose(0, 1) * self.window  # [C, L]


class HyenaOperator(nn.Module):
    """Order-N Hyena operator over ``[B, T, D]`` (Def. 3.1), with a step form over cached inputs."""

    def __init__(self, d: int, max_len: int, opt: HyenaCore.Options):
        super().__init__()
        self.d, self.order, self.max_len, self.kernel = d, opt.order, max_len, opt.short_kernel
        n_streams = (opt.order + 1) * d
        self.in_proj = nn.Linear(d, n_streams)
        self.short_conv = nn.Conv1d(n_streams, n_streams, opt.short_kernel, groups=n_streams,
                                    padding=opt.short_kernel - 1)
        self.filter = ImplicitFilter(opt.order * d, max_len, opt.filter_emb_dim, opt.filter_width,
                                     opt.filter_sine_freq, opt.decay_fast_pct, opt.decay_slow_pct,
                                     opt.decay_target)
        self.bias = nn.Parameter(torch.randn(opt.order, d))  # skip term D of each long conv
        self.out_proj = nn.Linear(d, d)
        self._cache: tuple | None = None

    # -- filters -------------------------------------------------------------------------------
    def _cache_key(self) -> tuple:
        # _version counts in-place updates (optimizer steps, load_state_dict); data_ptr catches
        # replaced or moved tensors. Either change makes the cached filter stale.
        return tuple((p.data_ptr(), p._version) for p in self.filter.parameters())

    def filters(self) -> tuple[Tensor, Tensor, Tensor]:
        """Filters ``h [N, D, L]``, their reversal and their spectrum ``rfft(h, 2L) [N, D, L + 1]``.

        With gradients on they are rebuilt (and differentiable) on every call; with gradients off
        they are computed once and reused until the filter's parameters change.
        """
        if torch.is_grad_enabled():
            self._cache = None
            return self._make_filters()
        if self._cache is not None and torch.compiler.is_compiling():
            # a compiled step reads the cache the eager prefill built (nothing trains while it
            # plans); the key check would break the graph
            return self._cache[1:]
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self._make_filters())
        return self._cache[1:]

    def _make_filters(self) -> tuple[Tensor, Tensor, Tensor]:
        # contiguous: the filter network's output is position-major, and a per-channel tap row with
        # a unit batch stride sends the step's batched product down torch's one-matrix-at-a-time path
        h = self.filter().view(self.order, self.d, self.max_len).contiguous()  # [N, D, L]
        return h, h.flip(-1), torch.fft.rfft(h, n=2 * self.max_len)  # flip keeps the layout

    def train(self, mode: bool = True) -> HyenaOperator:
        self._cache = None
        return super().train(mode)

    # -- parallel form -------------------------------------------------------------------------
    def forward(self, u: Tensor) -> Tensor:
        T = u.shape[1]  # u: [B, T, D]
        z = self.short_conv(self.in_proj(u).transpose(1, 2))[..., :T]  # [B, (N+1)D, T], causal
        v, *gates = z.split(self.d, dim=1)  # each [B, D, T]
        h, _, _ = self.filters()
        for n, x in enumerate(gates):  # z^{n+1} = x^n * (h^n * z^n + D^n z^n)
            with op_group("fft"):
                v = x * fft_conv(v, h[n, :, :T], self.bias[n])
        return self.out_proj(v.transpose(1, 2))  # [B, T, D]

    # -- step form -----------------------------------------------------------------------------
    def init_state(self, batch: int, device, dtype) -> HyenaLayerState:
        n_streams = (self.order + 1) * self.d
        return HyenaLayerState(
            short=torch.zeros(self.kernel - 1, batch, n_streams, device=device, dtype=dtype),
            history=[torch.empty(self.max_len, self.d, batch, device=device, dtype=dtype)
                     for _ in range(self.order)])

    def step(self, u: Tensor, state: HyenaLayerState) -> tuple[Tensor, HyenaLayerState]:
        if u.shape[1] == 1:
            return self._step_token(u, state)
        if state.middle is not None:  # a chunk convolves the whole suffix by FFT: per-row histories
            state = self.fold_middle(state, None)
        t = u.shape[1]  # u: [B, t, D]
        window = torch.cat([state.short.permute(1, 2, 0), self.in_proj(u).transpose(1, 2)], dim=-1)
        z = F.conv1d(window, self.short_conv.weight, self.short_conv.bias,
                     groups=self.short_conv.groups)  # [B, (N+1)D, t]
        short = window[..., window.shape[-1] - (self.kernel - 1):].permute(2, 0, 1).contiguous()
        v, *gates = z.split(self.d, dim=1)
        h, h_rev, h_f = self.filters()
        length, prefix = state.length, state.prefix
        for n, x in enumerate(gates):
            buffer = state.history[n]
            buffer[length:length + t] = v.permute(2, 1, 0)  # in place: branch with select_state
            end = length + t  # a chunk: the whole history by FFT, keeping the new positions
            with op_group("fft"):
                y = fft_conv(buffer[:end].permute(2, 1, 0), h[n], self.bias[n], k_f=h_f[n])[..., end - t:]
            if prefix is not None:  # a branched state: add the shared prefix's share
                y = self._with_prefix(y, prefix, n, length)
            v = x * y  # [B, D, t]
        return self.out_proj(v.transpose(1, 2)), HyenaLayerState(short, state.history, length + t, prefix)

    def _step_token(self, u: Tensor, state: HyenaLayerState) -> tuple[Tensor, HyenaLayerState]:
        """One token. The short convolution is its taps applied to the kept inputs; each long
        convolution is, per channel, the reversed filter times the time-major history: a row of
        taps against a [length, B] matrix whose rows are contiguous, and the new input lands as
        one contiguous [D, B] slab."""
        proj = self.in_proj(u[:, 0])  # [B, C]
        weight = self.short_conv.weight[:, 0]  # [C, kernel]
        z = torch.addcmul(self.short_conv.bias, proj, weight[:, -1])
        kept = state.short  # [kernel - 1, B, C]
        for j in range(self.kernel - 1):
            z.addcmul_(kept[j], weight[:, j])
        short = torch.cat([kept[1:], proj[None]]) if self.kernel > 1 else kept
        v, *gates = z.split(self.d, dim=1)  # each [B, D]
        _, h_rev, _ = self.filters()
        length, prefix, middle = state.length, state.prefix, state.middle
        end = length + 1
        M = middle.history[0].shape[0] if middle is not None else 0
        v = v.t()  # [D, B] from here on
        for n, x in enumerate(gates):
            buffer = state.history[n]
            buffer[length:end].copy_(v[None])  # in place (branch with select_state); a slice, not
            # an integer index, so that a compiled step does not specialize on the length
            with op_group("convolution"):  # y = sum_s h[s] z[end - 1 - s] + bias z[end - 1]
                taps = h_rev[n, :, self.max_len - end:].to(buffer.dtype)  # [D, end]
                y = torch.bmm(taps.unsqueeze(1), buffer[:end].transpose(0, 1)).squeeze(1)  # [D, B]
                y.addcmul_(v, self.bias[n, :, None])
                if middle is not None:  # the beam's tokens before the copies', once per beam
                    mid = middle.history[n]  # [M, D, beams]
                    taps = h_rev[n, :, self.max_len - M - end:self.max_len - end].to(mid.dtype)
                    share = torch.bmm(taps.unsqueeze(1), mid.transpose(0, 1))  # [D, 1, beams]
                    y = (y.view(self.d, mid.shape[-1], -1) + share.transpose(1, 2)).view(self.d, -1)
            if prefix is not None:  # the shared prefix's share at this position, [E, D] -> rows
                start = prefix.history[n].shape[-1] + M + length
                share = prefix.contribution[n][:, :, start:start + 1].squeeze(-1)  # [E, D]
                E = share.shape[0]
                y = (y.view(self.d, E, -1) + share.t()[:, :, None]).view(self.d, -1)
            v = x.t() * y
        return self.out_proj(v.t())[:, None], HyenaLayerState(short, state.history, end, prefix, middle)

    def _with_prefix(self, y: Tensor, prefix: ConvPrefix, n: int, length: int) -> Tensor:
        """y [B, D, t] (the suffix's share, ``length`` suffix tokens before it) plus the prefix's
        share at the same positions, read from ``prefix.contribution[n]`` [E, D, max_len]."""
        out = prefix.contribution[n]
        start = prefix.history[n].shape[-1] + length  # absolute position of the first new token
        B, t = y.shape[0], y.shape[-1]
        E = out.shape[0]
        return (y.reshape(E, B // E, self.d, t) + out[:, None, :, start:start + t]).view(B, self.d, t)

    def branch(self, state: HyenaLayerState, copies: int) -> HyenaLayerState:
        """The layer's state with each row's history kept once for ``copies`` rows.

        From a plain state the history becomes the :class:`ConvPrefix` (its inputs and their share
        of every output position, per long convolution). From a branched state each row's suffix
        becomes the :class:`ConvMiddle` (the old buffers, no copy), convolved once per row for its
        copies, which then keep only what they decode after it. Lengths and rows per group follow
        from the shapes."""
        if state.prefix is not None:
            return self._branch_suffix(state, copies)
        _, h, h_f = self.filters()
        length = state.length
        rows = state.short.shape[1]
        prefix_hist = [buffer[:length].permute(2, 1, 0) for buffer in state.history]  # [E, D, P]
        with op_group("fft"):  # the prefix's share of every later output: zero input after it
            prefix_out = [fft_conv(F.pad(z, (0, self.max_len - length)), h[n], None, k_f=h_f[n])
                          for n, z in enumerate(prefix_hist)]  # each [rows, D, max_len]
        like = state.history[0]
        return HyenaLayerState(short=state.short.repeat_interleave(copies, dim=1),
                               history=[like.new_empty((self.max_len - length, self.d, rows * copies))
                                        for _ in range(self.order)],
                               prefix=ConvPrefix(prefix_hist, prefix_out))

    def _branch_suffix(self, state: HyenaLayerState, copies: int) -> HyenaLayerState:
        if state.middle is not None:  # a third level: fold the middle into the suffixes first
            state = self.fold_middle(state, None)
        length, rows = state.length, state.short.shape[1]
        free = self.max_len - state.prefix.history[0].shape[-1] - length
        like = state.history[0]
        branched = HyenaLayerState(short=state.short.repeat_interleave(copies, dim=1),
                                   history=[like.new_empty((free, self.d, rows * copies))
                                            for _ in range(self.order)],
                                   prefix=state.prefix)
        if length:  # else nothing decoded since the prefix: the copies start empty
            branched.middle = ConvMiddle([buffer[:length] for buffer in state.history])
        return branched

    def fold_middle(self, state: HyenaLayerState, index: Tensor | None) -> HyenaLayerState:
        """A layer state with a middle level as one with per-row suffixes, keeping the rows
        ``index`` (all when None): each new suffix is its row's middle inputs, then its own,
        gathered straight into fresh buffers (the copy pruning needs anyway)."""
        mids, length, rows = state.middle.history, state.length, state.short.shape[1]
        if index is None:
            index = torch.arange(rows, device=state.short.device)
        M, _, beams = mids[0].shape
        parents = torch.div(index, rows // beams, rounding_mode="floor")
        cap = self.max_len - state.prefix.history[0].shape[-1]
        history = []
        for mid, own in zip(mids, state.history):
            out = own.new_empty((cap, self.d, len(index)))
            gather_columns(mid.reshape(M * self.d, beams), parents, out[:M].view(M * self.d, len(index)))
            gather_columns(own[:length].view(length * self.d, rows), index,
                           out[M:M + length].view(length * self.d, len(index)))
            history.append(out)
        return HyenaLayerState(state.short.index_select(1, index), history, M + length, state.prefix)

    def unshare(self, state: HyenaLayerState) -> HyenaLayerState:
        """The plain form of a branched layer state: every row's whole history."""
        if state.middle is not None:
            state = self.fold_middle(state, None)
        prefix, length = state.prefix, state.length
        P = prefix.history[0].shape[-1]
        rows_per_group = state.short.shape[1] // prefix.history[0].shape[0]
        history = []
        for pre, suffix in zip(prefix.history, state.history):
            out = suffix.new_empty((self.max_len, self.d, suffix.shape[-1]))
            out[:P] = pre.repeat_interleave(rows_per_group, dim=0).permute(2, 1, 0)
            out[P:P + length] = suffix[:length]
            history.append(out)
        return HyenaLayerState(state.short, history, P + length)


class HyenaBlock(nn.Module):
    """Pre-norm residual block: ``x + Hyena(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, cfg: CoreConfig, opt: HyenaCore.Options):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mixer = HyenaOperator(d, cfg.max_len, opt)
        self.mlp = nn.Sequential(nn.Linear(d, opt.mlp_ratio * d), nn.GELU(),
                                 nn.Linear(opt.mlp_ratio * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.mixer(self.norm1(x)))  # [B, T, D]
        return x + self.drop(self.mlp(self.norm2(x)))

    def step(self, x: Tensor, state: HyenaLayerState) -> tuple[Tensor, HyenaLayerState]:
        y, state = self.mixer.step(self.norm1(x), state)
        x = x + self.drop(y)
        return x + self.drop(self.mlp(self.norm2(x))), state


class HyenaCore(SequenceCore):
    """A stack of Hyena blocks. Long filters span ``cfg.max_len``; longer inputs are refused.

    Convolutions mix every earlier position, so packed episodes (resets) are not supported.
    """

    supports_resets = False
    float_ops = {
        "FFT long convolution (and its step form, a dot product with the cached filter)":
            "no int8 FFT; the filter taps decay over 3 orders of magnitude",
        "short depthwise causal convolution": "3 taps per channel; its step form reads the "
            "weights directly, and quant/dequant would cost more than the arithmetic",
        "implicit filter MLP": "runs once per model on positions, not per token: nothing to gain",
        "gating products": "activation x activation elementwise",
    }

    Options = HyenaOptions

    def __init__(self, cfg: CoreConfig, options: Options | None = None):
        super().__init__(cfg, options)
        self.blocks = nn.ModuleList(HyenaBlock(cfg, self.options) for _ in range(cfg.n_layers))

    def _check_length(self, length: int) -> None:
        if length > self.cfg.max_len:
            raise ValueError(f"hyena: sequence of {length} tokens is longer than the filters "
                             f"(max_len={self.cfg.max_len}); raise model max_len or shorten it")

    def forward(self, x: Tensor, resets: Tensor | None = None) -> Tensor:
        self.check_resets(resets)
        self._check_length(x.shape[1])  # x: [B, T, D]
        for block in self.blocks:
            x = block(x)
        return x

    def init_state(self, batch_size: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32) -> list[HyenaLayerState]:
        return [block.mixer.init_state(batch_size, device, dtype) for block in self.blocks]

    def select_state(self, state: list[HyenaLayerState], index: torch.Tensor) -> list[HyenaLayerState]:
        """Gather rows, copying only the valid part of each history buffer (of a branched state:
        only the suffixes, while rows stay with their prefix)."""
        if state and state[0].prefix is not None and not stays_grouped(
                index, state[0].short.shape[1], state[0].prefix.history[0].shape[0]):
            state = [block.mixer.unshare(layer) for block, layer in zip(self.blocks, state)]
        if state and state[0].middle is not None:
            return [block.mixer.fold_middle(layer, index) for block, layer in zip(self.blocks, state)]
        selected = []
        for layer in state:
            length = layer.length
            history = []
            for buffer in layer.history:  # [max_len, D, B]: gather the valid positions' columns
                cap, D, rows = buffer.shape
                out = buffer.new_empty((cap, D, len(index)))
                gather_columns(buffer[:length].view(length * D, rows), index,
                               out[:length].view(length * D, len(index)))
                history.append(out)
            selected.append(HyenaLayerState(layer.short.index_select(1, index), history, length,
                                            layer.prefix))
        return selected

    def branch_state(self, state: list[HyenaLayerState], copies: int) -> list[HyenaLayerState]:
        return [block.mixer.branch(layer, copies) for block, layer in zip(self.blocks, state)]

    def step(self, x: Tensor, state: list[HyenaLayerState]) -> tuple[Tensor, list[HyenaLayerState]]:
        seen = state[0].tokens_seen() if state else 0  # the shared levels' tokens and the row's own
        self._check_length(seen + x.shape[1])  # x: [B, t, D]
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block.step(x, layer_state)
            new_state.append(layer_state)
        return x, new_state
