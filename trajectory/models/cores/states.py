"""The decode states of the cores whose state grows with the history (GPT's keys and values, Hyena's
convolution inputs): one small dataclass per level.

A plain state holds every row's whole history. ``branch_state`` splits it into levels (see
:mod:`trajectory.models.cores.base`): the *prefix*, an environment's context kept once for its
rows; optionally a *middle*, a beam's decoded tokens kept once for its copies; and per row the
*suffix* of what the row decoded after them, in buffers preallocated up to the core's ``max_len``
(the first ``length`` entries valid; ``step`` writes into them in place).

Tensors only ever sit in lists (one per layer or per long convolution) and the counters are plain
ints, so a compiled step guards on the lengths as it did on dict entries.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


# -- GPT -------------------------------------------------------------------------------------------
@dataclass
class KVPrefix:
    """An environment's context, per layer: keys stored transposed ``[E, H, hd, P]`` (the layout
    their product with the queries reads) and values ``[E, H, P, hd]``."""

    keys_t: list[Tensor]
    values: list[Tensor]


@dataclass
class KVMiddle:
    """A beam's tokens decoded after the prefix, read once for its copies: per layer keys and
    values ``[beams, H, M, hd]`` (views of the beam's old buffers, not copies)."""

    keys: list[Tensor]
    values: list[Tensor]


@dataclass
class GPTState:
    """GPT's K/V cache: per layer, key and value buffers ``[B, H, cap, hd]`` whose first ``length``
    entries are valid (the whole history, or a branched state's suffix after its prefix and
    middle); ``pos`` counts every token seen, the shared levels' included."""

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0
    pos: int = 0
    prefix: KVPrefix | None = None
    middle: KVMiddle | None = None  # only with a prefix


# -- Hyena -----------------------------------------------------------------------------------------
@dataclass
class ConvPrefix:
    """An environment's context, per long convolution: its inputs ``[E, D, P]`` and their share of
    every output position ``[E, D, max_len]`` (the convolution is linear in its input, so later
    outputs are this share plus the suffix's)."""

    history: list[Tensor]
    contribution: list[Tensor]


@dataclass
class ConvMiddle:
    """A beam's long-convolution inputs decoded after the prefix, read once for its copies:
    ``[M, D, beams]`` each (the beam's old buffers, not copies)."""

    history: list[Tensor]


@dataclass
class HyenaLayerState:
    """One Hyena operator's state: the short convolution's last ``kernel - 1`` inputs
    ``[kernel - 1, B, C]``, and per long convolution its inputs so far, time-major
    ``[cap, D, B]`` with the first ``length`` positions valid (the suffix, when branched)."""

    short: Tensor
    history: list[Tensor]
    length: int = 0
    prefix: ConvPrefix | None = None
    middle: ConvMiddle | None = None  # only with a prefix

    def tokens_seen(self) -> int:
        """Positions before the next token: the shared levels' and the row's own."""
        shared = self.prefix.history[0].shape[-1] if self.prefix is not None else 0
        return shared + (self.middle.history[0].shape[0] if self.middle is not None else 0) + self.length
