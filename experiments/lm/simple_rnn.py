"""The SimpleRNN family: one gated linear recurrence over a key-value state, written several ways.

Each layer is a pre-norm residual block ``x + W_o LN(o)`` (optionally followed by an MLP block) whose
mixer reads four projections of its input ``x_t``:

    q_t, k_t, v_t, g_t = W_q x_t, W_k x_t, W_v x_t, W_g x_t        (q, k, g: d_k wide; v: d_v)
    f_t = sigmoid(g_t)                                             forget gate, one per key row
    S_t = diag(f_t) S_{t-1} + k_t v_t^T                            state [d_k, d_v]
    o_t = S_t^T q_t / sqrt(d_k)                                    read-out [d_v]

With ``f_t = 1`` this is the plain ``S_t = S_{t-1} + k_t v_t^T`` of the optimisation study the
family comes from; the gate (``g``) keeps the state bounded so the model also trains as a language
model. A reset (packed sequences) sets ``f_t = 0``, so ``S_t = k_t v_t^T``.

The variants compute the same function with the same parameters (one ``qkvg`` weight whose rows
are q, k, v, g, so every variant loads every other's state dict) and differ only in how:

    simple        batch-first tensors, separate q/k/v/g projections, Python loop indexing x[:, t]
    seqfirst      inputs transposed to [T, B, D] first, so each step reads a leading-dim slice
    fused         seqfirst + one fused QKVG matmul, then a split
    kvout         fused + all outer products k_t v_t^T computed before the loop ([T, B, dk, dv])
    scan          the recurrence as h_t = a_t * h_{t-1} + b_t by the parallel associative scan of
                  trajectory.models.ops.scan (O(log T) depth, O(T * dk * dv) memory)

``*_cont`` versions of seqfirst / fused / kvout call ``.contiguous()`` after every transpose and
split, as the study tried. ``benchmarks/lm_simple_rnn.py`` times them against ``simple``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from experiments.lm.catalog import SimpleRNNOptions
from trajectory.models.cores import CoreConfig, SequenceCore
from trajectory.models.cores.base import State
from trajectory.models.ops.scan import linear_scan

Tensor = torch.Tensor
# A recurrence: (q, k, v, f) [B, T, .] each, S0 [B, dk, dv] -> (o [B, T, dv], S_T [B, dk, dv])
Recurrence = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


# -- the recurrences, batch-first in and out; seq-first variants transpose inside ------------------
def loop_batch_first(q: Tensor, k: Tensor, v: Tensor, f: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """The baseline: a loop over time reading ``[:, t]`` slices of batch-first tensors."""
    out = []
    for t in range(q.shape[1]):
        S = f[:, t, :, None] * S + k[:, t, :, None] * v[:, t, None, :]  # [B, dk, dv]
        out.append(torch.einsum("bk,bkv->bv", q[:, t], S))
    return torch.stack(out, dim=1), S


def loop_seq_first(q: Tensor, k: Tensor, v: Tensor, f: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """Loop over the leading dim of [T, B, .] tensors (the caller made them sequence-first)."""
    out = []
    for q_t, k_t, v_t, f_t in zip(q, k, v, f):
        S = f_t[:, :, None] * S + k_t[:, :, None] * v_t[:, None, :]
        out.append(torch.einsum("bk,bkv->bv", q_t, S))
    return torch.stack(out, dim=0), S  # [T, B, dv]


def loop_kv_outside(q: Tensor, k: Tensor, v: Tensor, f: Tensor, S: Tensor,
                    contiguous: bool) -> tuple[Tensor, Tensor]:
    """Sequence-first loop with every outer product made in one batched op before it."""
    kv = k[..., :, None] * v[..., None, :]  # [T, B, dk, dv]
    if contiguous:
        kv = kv.contiguous()
    out = []
    for q_t, kv_t, f_t in zip(q, kv, f):
        S = f_t[:, :, None] * S + kv_t
        out.append(torch.einsum("bk,bkv->bv", q_t, S))
    return torch.stack(out, dim=0), S


def parallel_scan(q: Tensor, k: Tensor, v: Tensor, f: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """All states at once: ``S_t = a_t * S_{t-1} + b_t`` with a = f (broadcast over d_v), b = k v^T."""
    kv = k[..., :, None] * v[..., None, :]  # [B, T, dk, dv]
    states = linear_scan(f[..., None], kv, h0=S)  # [B, T, dk, dv]
    return torch.einsum("btk,btkv->btv", q, states), states[:, -1]


@dataclass(frozen=True)
class Variant:
    """How one variant runs: layout, projection and recurrence."""

    seq_first: bool
    fused: bool
    contiguous: bool
    recurrence: str  # batch_loop | seq_loop | kv_outside | scan


VARIANTS: dict[str, Variant] = {
    "simple": Variant(seq_first=False, fused=False, contiguous=False, recurrence="batch_loop"),
    "seqfirst": Variant(seq_first=True, fused=False, contiguous=False, recurrence="seq_loop"),
    "seqfirst_cont": Variant(seq_first=True, fused=False, contiguous=True, recurrence="seq_loop"),
    "fused": Variant(seq_first=True, fused=True, contiguous=False, recurrence="seq_loop"),
    "fused_cont": Variant(seq_first=True, fused=True, contiguous=True, recurrence="seq_loop"),
    "kvout": Variant(seq_first=True, fused=True, contiguous=False, recurrence="kv_outside"),
    "kvout_cont": Variant(seq_first=True, fused=True, contiguous=True, recurrence="kv_outside"),
    "scan": Variant(seq_first=False, fused=True, contiguous=False, recurrence="scan"),
}


class SimpleRNNMixer(nn.Module):
    """q, k, v, g projections -> gated key-value recurrence (run by ``variant``) -> LN -> W_o."""

    def __init__(self, d_model: int, d_key: int, d_value: int, variant: Variant, gate_bias: float):
        super().__init__()
        self.dk, self.dv, self.variant = d_key, d_value, variant
        self.qkvg = nn.Linear(d_model, 3 * d_key + d_value)  # rows: q, k, v, g
        self.norm = nn.LayerNorm(d_value)
        self.out = nn.Linear(d_value, d_model)
        with torch.no_grad():  # forget gates start near 1: a memory of ~1 / (1 - f) tokens
            self.qkvg.bias[-d_key:].fill_(gate_bias)

    def project(self, x: Tensor) -> list[Tensor]:
        """x [..., D] -> q, k, v, g; one matmul when fused, four (on weight slices) when not."""
        sizes = [self.dk, self.dk, self.dv, self.dk]
        if self.variant.fused:
            parts = list(self.qkvg(x).split(sizes, dim=-1))
        else:
            weights = self.qkvg.weight.split(sizes, dim=0)
            biases = self.qkvg.bias.split(sizes, dim=0)
            parts = [F.linear(x, w, b) for w, b in zip(weights, biases)]
        if self.variant.contiguous:
            parts = [p.contiguous() for p in parts]
        return parts

    def forward(self, x: Tensor, S: Tensor, resets: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B, T, D]; S [B, dk, dv]; resets bool [B, T] or None -> y [B, T, D], S_T."""
        var = self.variant
        if var.seq_first:
            x = x.transpose(0, 1)  # [T, B, D]
            if var.contiguous:
                x = x.contiguous()
            if resets is not None:
                resets = resets.transpose(0, 1)
        q, k, v, g = self.project(x)
        q = q * (1.0 / math.sqrt(self.dk))
        f = torch.sigmoid(g)
        if resets is not None:
            f = f.masked_fill(resets[..., None], 0.0)
        if var.recurrence == "batch_loop":
            o, S = loop_batch_first(q, k, v, f, S)
        elif var.recurrence == "seq_loop":
            o, S = loop_seq_first(q, k, v, f, S)
        elif var.recurrence == "kv_outside":
            o, S = loop_kv_outside(q, k, v, f, S, var.contiguous)
        else:
            o, S = parallel_scan(q, k, v, f, S)
        if var.seq_first:
            o = o.transpose(0, 1)  # [B, T, dv]
            if var.contiguous:
                o = o.contiguous()
        return self.out(self.norm(o)), S


class SimpleRNNBlock(nn.Module):
    def __init__(self, cfg: CoreConfig, opt: SimpleRNNCore.Options, variant: Variant):
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.LayerNorm(d)
        self.mixer = SimpleRNNMixer(d, opt.d_key or d, opt.d_value or d, variant, opt.gate_bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.mlp = None
        if opt.mlp_ratio:
            self.norm2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, opt.mlp_ratio * d), nn.GELU(),
                                     nn.Linear(opt.mlp_ratio * d, d))

    def forward(self, x: Tensor, S: Tensor, resets: Tensor | None) -> tuple[Tensor, Tensor]:
        y, S = self.mixer(self.norm1(x), S, resets)
        x = x + self.drop(y)
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return x, S


class SimpleRNNCore(SequenceCore):
    """A stack of SimpleRNN blocks implementing the SequenceCore contract.

    The state is one ``S [B, d_k, d_v]`` per layer; ``step`` runs the variant's own recurrence on a
    chunk from that state, so the parallel and step forms share every operation.
    """

    supports_resets = True

    Options = SimpleRNNOptions

    def __init__(self, cfg: CoreConfig, options: Options | None = None):
        super().__init__(cfg, options)
        name = self.options.variant
        if name not in VARIANTS:
            raise ValueError(f"simple_rnn: unknown variant '{name}'; choose one of: {', '.join(VARIANTS)}")
        self.blocks = nn.ModuleList(SimpleRNNBlock(cfg, self.options, VARIANTS[name])
                                    for _ in range(cfg.n_layers))

    def _run(self, x: Tensor, states: list[Tensor], resets: Tensor | None) -> tuple[Tensor, list]:
        new_states = []
        for block, S in zip(self.blocks, states):
            x, S = block(x, S, resets)
            new_states.append(S)
        return x, new_states

    def forward(self, x: Tensor, resets: Tensor | None = None) -> Tensor:
        """x [B, T, D]; resets bool [B, T] or None -> [B, T, D]."""
        self.check_resets(resets)
        states = self.init_state(x.shape[0], x.device, x.dtype)["S"]
        return self._run(x, states, None if resets is None else resets.to(x.device))[0]

    def init_state(self, batch_size: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32) -> State:
        shapes = [(batch_size, b.mixer.dk, b.mixer.dv) for b in self.blocks]
        return {"S": [torch.zeros(s, device=device, dtype=dtype) for s in shapes]}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x [B, t, D] following the state's tokens -> y [B, t, D], new state."""
        y, states = self._run(x, state["S"], None)
        return y, {"S": states}
