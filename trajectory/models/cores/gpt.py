"""GPT core: a pre-norm causal transformer (Radford et al., 2019), as in the Trajectory Transformer.

    x [B, T, D] + learned position embedding -> n_layers x Block -> [B, T, D]
    Block: x + Attn(LN(x)), then x + MLP(LN(x))      (pre-norm; the final norm is the caller's)

Attention uses a fused QKV projection that is one plain ``nn.Linear`` and a plain ``nn.Linear``
output projection, so ``torch.ao.quantization.quantize_dynamic`` turns both into int8 kernels; the
attention itself is ``F.scaled_dot_product_attention``.

Step form: the state caches, per layer, the keys and values of the tokens seen so far in buffers
preallocated for ``max_len`` tokens (``[B, H, max_len, hd]``; the first ``length`` entries are
valid), and a position counter shared by all rows. New keys/values are written into the buffers in
place, so decoding a token costs no copy of the cache (appending by concatenation copied the whole
cache, every layer, every token). A chunk of ``t > 1`` tokens attends to the cache and causally
within itself. ``select_state`` copies only the valid entries.

Shared prefix (``branch_state``): a planner's beams of one environment share its context. The
branched state keeps the context's keys/values once per environment (the prefix, keys stored
transposed) and per row only the keys/values decoded after it (the suffix). A query's scores against
the prefix come from one matrix product per environment (the queries of all its rows stacked),
against the suffix from its own row; each part is normalized by its own maximum and the parts are
merged with their sums, so the result is the softmax over the concatenated keys. Reordering beams
copies suffixes only. Branching a branched state (a beam expanded into copies) adds a middle level:
the beam's suffix, read once for its copies (their queries stacked), which then keep only what they
decode after it; pruning folds it back into per-row suffixes, a copy it needed anyway.

Context window. Positions are learned for ``max_len`` tokens, so ``forward`` refuses longer inputs.
``step`` keeps going past ``max_len`` as a sliding window: a token attends to itself and the
``max_len - 1`` tokens before it, the cache keeps the last ``max_len`` keys/values, and new tokens
take the last position ``max_len - 1`` (where the newest token of a full training window sits).
Cached keys/values keep the positions they were computed with (shifting them would mean recomputing
the window, which is what the cache avoids), so past ``max_len`` the step form is a documented
approximation, not equal to any ``forward`` call; up to ``max_len`` tokens it is exact. Feeding the
same tokens in any chunking gives the same outputs either way. The planner keeps its context within
``max_len``, so it never reaches the approximation.

Packed episodes: ``resets`` give a block-diagonal causal mask and positions that restart at 0 at each
reset, so each episode is computed exactly as if it were run alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trajectory.models.cores.base import CoreConfig, SequenceCore, stays_grouped
from trajectory.models.cores.options import GPTOptions
from trajectory.models.cores.states import GPTState, KVMiddle, KVPrefix
from trajectory.models.ops import decode_attention
from trajectory.models.ops.scopes import op_group

KV = tuple[torch.Tensor, torch.Tensor, int]  # key and value buffers [B, H, cap, hd], valid length


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV ``nn.Linear`` and SDPA."""

    def __init__(self, cfg: CoreConfig, bias: bool):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=bias)  # fused: one plain Linear, so int8 applies
        self.proj = nn.Linear(d, d, bias=bias)
        self.attn_dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                past: KV | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D]; mask bool [B or 1, 1, T, S] (True = may attend) or None for plain causal
        (or, with ``past``, for one query that sees every cached key). Returns y and the key and
        value buffers: with ``past``, its buffers with the new entries written at ``length`` when
        they fit (in place), else new tensors [B, H, length + T, hd]; without, K and V of x."""
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (z.view(B, T, H, D // H).transpose(1, 2) for z in (q, k, v))  # [B, H, T, hd]
        with op_group("attention"):
            if past is not None:
                k_buf, v_buf, length = past
                if length + T <= k_buf.shape[2]:
                    k_buf[:, :, length:length + T] = k
                    v_buf[:, :, length:length + T] = v
                    k, v = k_buf[:, :, :length + T], v_buf[:, :, :length + T]  # [B, H, S, hd] views
                else:  # past the buffer (sliding window): the caller trims
                    k_buf = k = torch.cat([k_buf[:, :, :length], k], dim=2)
                    v_buf = v = torch.cat([v_buf[:, :, :length], v], dim=2)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and past is None,
                dropout_p=self.attn_dropout if self.training else 0.0)  # [B, H, T, hd]
        y = y.transpose(1, 2).reshape(B, T, D)
        if past is not None:
            k, v = k_buf, v_buf
        return self.resid_drop(self.proj(y)), k, v


    def forward_shared(self, x: torch.Tensor, shared: list[tuple[torch.Tensor, torch.Tensor]],
                       past: KV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, t, D]; shared: levels of keys and values [G, H, L, hd] read by groups of B / G
        consecutive rows (see :func:`shared_prefix_attention`); past: the rows' suffix buffers
        [B, H, cap, hd] and their valid length (the new entries are written in place; the caller
        keeps them within cap)."""
        B, t, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (z.view(B, t, H, D // H).transpose(1, 2) for z in (q, k, v))  # [B, H, t, hd]
        with op_group("attention"):
            k_buf, v_buf, length = past
            k_buf[:, :, length:length + t] = k
            v_buf[:, :, length:length + t] = v
            y = attend_shared(q, shared, k_buf[:, :, :length + t], v_buf[:, :, :length + t])
        y = y.transpose(1, 2).reshape(B, t, D)
        return self.resid_drop(self.proj(y)), k_buf, v_buf


def attend_shared(q: torch.Tensor, shared: list[tuple[torch.Tensor, torch.Tensor]],
                  suffix_k: torch.Tensor, suffix_v: torch.Tensor) -> torch.Tensor:
    """The attention of :func:`shared_prefix_attention`, by the fused CPU kernel where it applies
    (see :mod:`trajectory.models.ops.decode_attention`), else by torch."""
    if decode_attention.applies(q):
        return decode_attention.decode_attention(q, [keys for keys, _ in shared],
                                                 [values for _, values in shared], suffix_k, suffix_v)
    decode_attention.count_torch_path()
    return shared_prefix_attention(q, shared, suffix_k, suffix_v)


def shared_prefix_attention(q: torch.Tensor, shared: list[tuple[torch.Tensor, torch.Tensor]],
                            suffix_k: torch.Tensor, suffix_v: torch.Tensor) -> torch.Tensor:
    """softmax(q [k_shared...; k_suffix]^T / sqrt(hd)) [v_shared...; v_suffix], each shared level's
    keys/values read once per group of rows.

    q [B, H, t, hd]; ``shared``: levels of (keys, values), both [G, H, L, hd] at any strides (the
    context's keys are a view of keys stored transposed, the layout their product reads), each
    with G dividing B and B / G consecutive rows per group (an environment's context; a beam's
    tokens shared by its copies); suffix_k/v [B, H, S, hd], each row's own, whose last t entries are
    the queries' own tokens (causal among them). Returns [B, H, t, hd].

    Each part is a softmax of its own (its own maximum, sum and weighted values), merged per query
    at the end, as flash attention merges blocks: the large score tensors stay in the layout their
    product wrote them in, and only [B, H, t, hd + 2] statistics change layout.
    """
    B, H, t, hd = q.shape
    S = suffix_k.shape[2]
    q = q * hd ** -0.5
    parts = []
    for keys, values in shared:
        G = keys.shape[0]
        r = B // G
        grouped = q.view(G, r, H, t, hd).transpose(1, 2).reshape(G, H, r * t, hd)  # a product per group
        stats = torch.cat(softmax_part(grouped @ keys.transpose(-1, -2), values), -1)  # [G, H, r t, hd + 2]
        stats = stats.view(G, H, r, t, hd + 2).transpose(1, 2).reshape(B, H, t, hd + 2)
        parts.append(stats.split((hd, 1, 1), dim=-1))

    scores = q @ suffix_k.transpose(-1, -2)  # [B, H, t, S]
    if t > 1:  # query i sees the suffix up to its own token S - t + i
        scores = scores.masked_fill_(~window_mask(S - t, t, S, q.device), float("-inf"))
    parts.append(softmax_part(scores, suffix_v))  # finite maxima: every query sees its own token

    top = parts[0][2]
    for _, _, part_top in parts[1:]:
        top = torch.maximum(top, part_top)
    out = total = None
    for part_out, part_sum, part_top in parts:
        scale = (part_top - top).exp_()
        out = part_out * scale if out is None else out.addcmul_(part_out, scale)
        total = part_sum * scale if total is None else total.addcmul_(part_sum, scale)
    return out.div_(total)


def softmax_part(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One part of a softmax split over key blocks: scores [..., L] (overwritten) and values
    [..., L, hd] -> the values weighted by exp(score - max) [..., hd], the weights' sum [..., 1] and
    the max [..., 1]."""
    top = scores.amax(-1, keepdim=True)
    weights = scores.sub_(top).exp_()
    return weights @ values, weights.sum(-1, keepdim=True), top


class MLP(nn.Module):
    def __init__(self, cfg: CoreConfig, ratio: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, ratio * cfg.d_model, bias=bias)
        self.proj = nn.Linear(ratio * cfg.d_model, cfg.d_model, bias=bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: LN -> attention -> residual; LN -> MLP -> residual."""

    def __init__(self, cfg: CoreConfig, options: GPTCore.Options):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=options.bias)
        self.attn = CausalSelfAttention(cfg, options.bias)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=options.bias)
        self.mlp = MLP(cfg, options.mlp_ratio, options.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                past: KV | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn(self.ln1(x), mask, past)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v

    def forward_shared(self, x: torch.Tensor, shared: list[tuple[torch.Tensor, torch.Tensor]],
                       past: KV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn.forward_shared(self.ln1(x), shared, past)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


def segment_positions_and_mask(resets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """resets bool [B, T] -> positions within each episode [B, T] and a block-diagonal causal mask
    [B, 1, T, T] (True where query i may attend to key j: j <= i, same episode)."""
    T = resets.shape[1]
    idx = torch.arange(T, device=resets.device)
    start = torch.where(resets, idx, 0).cummax(dim=1).values  # [B, T] index of the episode start
    segment = resets.long().cumsum(dim=1)  # [B, T] episode id
    same = segment[:, :, None] == segment[:, None, :]  # [B, T, T]
    causal = idx[:, None] >= idx[None, :]  # [T, T]
    return idx - start, (same & causal)[:, None]


def window_mask(cached: int, t: int, window: int, device: torch.device) -> torch.Tensor:
    """Mask [t, cached + t] for ``t`` new queries after ``cached`` keys: query i sees key j when
    j <= cached + i (causal) and cached + i - j < window (sliding window)."""
    lag = (torch.arange(t, device=device) + cached)[:, None] - torch.arange(cached + t, device=device)
    return (lag >= 0) & (lag < window)


class GPTCore(SequenceCore):
    """Pre-norm GPT with a learned absolute position embedding and a K/V cache for ``step``."""

    supports_resets = True
    float_ops = {
        "attention (SDPA: softmax(QK^T)V over the K/V cache)": "no int8 attention kernel on CPU; "
        "activations on both sides, so it would need a quant/dequant per step",
    }

    Options = GPTOptions

    def __init__(self, cfg: CoreConfig, options: Options | None = None):
        super().__init__(cfg, options)
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"gpt: d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads})")
        # PyTorch's default N(0, 1) rows: positions stay visible next to inputs of unit scale (at
        # GPT-2's 0.02 they are swamped, and offset-based tasks learn far more slowly).
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, self.options) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, resets: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] with T <= max_len; resets bool [B, T] or None -> [B, T, D]."""
        self.check_resets(resets)
        T = x.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"gpt: sequence of {T} tokens is longer than max_len={self.cfg.max_len}; "
                             f"shorten the window or build the core with a larger max_len")
        if resets is None:
            positions, mask = torch.arange(T, device=x.device), None  # [T]; plain causal
        else:
            positions, mask = segment_positions_and_mask(resets.to(x.device))  # [B, T], [B, 1, T, T]
        h = self.drop(x + self.pos_emb(positions))
        for block in self.blocks:
            h, _, _ = block(h, mask)
        return h

    def init_state(self, batch_size: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32) -> GPTState:
        """Per layer, K and V buffers [B, H, max_len, hd], none valid yet. ``step`` writes into the
        buffers: branch with select_state."""
        H, n = self.cfg.n_heads, self.cfg.n_layers
        shape = (batch_size, H, self.cfg.max_len, self.cfg.d_model // H)
        return GPTState(keys=[torch.empty(shape, device=device, dtype=dtype) for _ in range(n)],
                        values=[torch.empty(shape, device=device, dtype=dtype) for _ in range(n)])

    def step(self, x: torch.Tensor, state: GPTState) -> tuple[torch.Tensor, GPTState]:
        """x [B, t, D] following the state's tokens -> y [B, t, D], state with K/V appended
        (the last max_len entries)."""
        if state.prefix is not None:
            if state.pos + x.shape[1] <= self.cfg.max_len:  # pos: prefix and suffix tokens
                return self._step_shared(x, state)
            state = self._unshare(state)  # about to slide past the window: the plain form does that
        t, window = x.shape[1], self.cfg.max_len
        pos, cached = state.pos, state.length
        positions = (pos + torch.arange(t, device=x.device)).clamp(max=window - 1)  # [t]
        mask = None  # one new token within the window sees every cached key
        if t > 1 or cached + 1 > window:
            mask = window_mask(cached, t, window, x.device)  # [t, cached + t]
        h = self.drop(x + self.pos_emb(positions))
        keys, values = [], []
        for block, k, v in zip(self.blocks, state.keys, state.values):
            h, k, v = block(h, mask, (k, v, cached))
            if k.shape[2] > window:  # slid past max_len: keep the last window, as a new buffer
                k, v = k[:, :, -window:].contiguous(), v[:, :, -window:].contiguous()
            keys.append(k)
            values.append(v)
        return h, GPTState(keys, values, length=min(cached + t, window), pos=pos + t)

    def _step_shared(self, x: torch.Tensor, state: GPTState) -> tuple[torch.Tensor, GPTState]:
        t, pos, cached = x.shape[1], state.pos, state.length
        prefix, middle = state.prefix, state.middle
        h = self.drop(x + self.pos_emb(pos + torch.arange(t, device=x.device)))
        for layer, (block, k, v) in enumerate(zip(self.blocks, state.keys, state.values)):
            shared = [(prefix.keys_t[layer].transpose(-1, -2), prefix.values[layer])]
            if middle is not None:
                shared.append((middle.keys[layer], middle.values[layer]))
            h, _, _ = block.forward_shared(h, shared, (k, v, cached))
        return h, GPTState(state.keys, state.values, cached + t, pos + t, prefix, middle)

    def branch_state(self, state: GPTState, copies: int) -> GPTState:
        """Each row becomes ``copies`` rows sharing its keys/values, kept once.

        From a plain state, the rows' keys/values become the :class:`KVPrefix`. From a state that
        already has a prefix, each row's suffix becomes the :class:`KVMiddle` (the old buffers, no
        copy), read once for its ``copies`` children; they then keep only what they decode after
        it. Lengths and group sizes follow from the shapes."""
        if state.middle is not None:  # a third level: fold the middle into the suffixes first
            state = self._fold_middle(state, None)
        length = state.length
        rows, H, _, hd = state.keys[0].shape
        if state.prefix is not None:
            own_shape = (rows * copies, H, self.cfg.max_len - state.prefix.values[0].shape[2] - length, hd)
            branched = GPTState([b.new_empty(own_shape) for b in state.keys],
                                [b.new_empty(own_shape) for b in state.values], pos=state.pos,
                                prefix=state.prefix)
            if length:  # else nothing decoded since the prefix: the copies start empty
                branched.middle = KVMiddle([b[:, :, :length] for b in state.keys],
                                           [b[:, :, :length] for b in state.values])
            return branched
        suffix_shape = (rows * copies, H, self.cfg.max_len - length, hd)
        prefix = KVPrefix(keys_t=[b[:, :, :length].transpose(-1, -2).contiguous() for b in state.keys],
                          values=[b[:, :, :length].contiguous() for b in state.values])
        return GPTState([b.new_empty(suffix_shape) for b in state.keys],
                        [b.new_empty(suffix_shape) for b in state.values], pos=state.pos, prefix=prefix)

    def _fold_middle(self, state: GPTState, index: torch.Tensor | None) -> GPTState:
        """A state with a middle level as a two-level one (prefix, then per-row suffixes), keeping
        the rows ``index`` (all rows when None): each new suffix is its row's middle entries
        followed by its own, gathered straight into fresh buffers (the pruning copy)."""
        middle, length = state.middle, state.length
        rows = state.keys[0].shape[0]
        if index is None:
            index = torch.arange(rows, device=state.keys[0].device)
        parents = torch.div(index, rows // middle.keys[0].shape[0], rounding_mode="floor")
        M = middle.keys[0].shape[2]

        def fold(mid: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
            out = own.new_empty((len(index), own.shape[1], M + own.shape[2], own.shape[3]))
            torch.index_select(mid, 0, parents, out=out[:, :, :M])
            torch.index_select(own[:, :, :length], 0, index, out=out[:, :, M:M + length])
            return out
        return GPTState([fold(m, o) for m, o in zip(middle.keys, state.keys)],
                        [fold(m, o) for m, o in zip(middle.values, state.values)],
                        M + length, state.pos, state.prefix)

    def _unshare(self, state: GPTState) -> GPTState:
        """The plain form of a shared-prefix state: every row's full K/V buffers."""
        if state.middle is not None:
            state = self._fold_middle(state, None)
        prefix, length = state.prefix, state.length
        P = prefix.values[0].shape[2]
        rows_per_env = state.keys[0].shape[0] // prefix.values[0].shape[0]

        def join(pre: torch.Tensor, suf: torch.Tensor) -> torch.Tensor:
            out = suf.new_empty((suf.shape[0], suf.shape[1], self.cfg.max_len, suf.shape[3]))
            out[:, :, :P] = pre.repeat_interleave(rows_per_env, dim=0)
            out[:, :, P:P + length] = suf[:, :, :length]
            return out
        return GPTState([join(p.transpose(-1, -2), s) for p, s in zip(prefix.keys_t, state.keys)],
                        [join(p, s) for p, s in zip(prefix.values, state.values)],
                        P + length, state.pos)

    def select_state(self, state: GPTState, index: torch.Tensor) -> GPTState:
        """Gather rows, copying only the valid entries of each buffer into fresh buffers (of a
        shared-prefix state: only the suffixes, while rows stay with their prefix)."""
        if state.prefix is not None and not stays_grouped(index, state.keys[0].shape[0],
                                                          state.prefix.values[0].shape[0]):
            return self.select_state(self._unshare(state), index)
        if state.middle is not None:
            return self._fold_middle(state, index)
        length = state.length

        def gather(buffer: torch.Tensor) -> torch.Tensor:
            out = buffer.new_empty((len(index), *buffer.shape[1:]))
            # written in place through the strided view: no gathered temporary copied over
            torch.index_select(buffer[:, :, :length], 0, index, out=out[:, :, :length])
            return out
        return GPTState([gather(b) for b in state.keys], [gather(b) for b in state.values],
                        length, state.pos, state.prefix)
