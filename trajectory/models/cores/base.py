"""The SequenceCore contract every sequence model of the package implements.

A core maps embeddings ``x [B, T, D]`` to features ``[B, T, D]`` causally (output t sees inputs <= t).
It has two forms that compute the same function:

* ``forward(x, resets)``: the parallel form, for training and for prefilling a planner's context;
* ``step(x, state)``: the incremental form, fed one token or a chunk of tokens at a time, carrying a
  state between calls; planners decode with it.

``select_state(state, index)`` gathers batch rows of a state (beam reordering and expansion).
``branch_state(state, copies)`` turns each row into ``copies`` consecutive rows that continue the
same history: a planner's beams of one environment. By default it is ``select_state`` with every row
repeated; a core whose state grows with the history overrides it to keep the shared history once per
original row (the *prefix*) and only what each copy adds after it per row (the *suffix*), so that
decoding reads the prefix once per group and reordering copies only suffixes. A planner branches
again at every beam expansion: a core may then keep each beam's suffix once for its copies too (a
*middle* level), folded back into per-row suffixes by the next ``select_state``. Such a state still
accepts any ``select_state`` index; one that mixes rows of different groups is first expanded to
the plain form.
``step`` may write into the buffers of the state it is given (GPT's K/V cache and Hyena's history
are preallocated and filled in place), so a state is consumed by ``step``: to continue one state in
two ways, branch it with ``select_state`` first, which copies.
A state whose tensors all lead with the batch (nested in dataclasses, dicts, tuples or lists) works
with the default ``select_state``; a core that keeps shared levels (GPT, Hyena: one dataclass per
level, :mod:`trajectory.models.cores.states`) overrides it.

``resets`` (bool ``[B, T]``, True where a new episode starts) lets a core run on packed episodes:
the output at a reset position and after it must not depend on anything before it. A core that
cannot honour resets sets ``supports_resets = False`` and raises :class:`ResetsUnsupported`.

Cores know nothing of RL: the language-model and vision experiments reuse them unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

State = Any  # tensors, batch first, nested in dataclasses / dicts / tuples / lists


@dataclass
class CoreConfig:
    """Sizes shared by every core; core-specific knobs live in the core's own ``Options``."""

    d_model: int = 128  # width of the residual stream
    n_layers: int = 4
    n_heads: int = 4  # attention / retention heads (cores without heads ignore it)
    max_len: int = 250  # longest sequence in tokens the core is built for (positions, filter length)
    dropout: float = 0.1  # residual / attention dropout; inactive in eval mode


class ResetsUnsupported(ValueError):
    pass


def map_state(state: State, fn) -> State:
    """Apply ``fn`` to every tensor of a nested state."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: map_state(getattr(state, f.name), fn)
                                             for f in dataclasses.fields(state) if f.init})
    if isinstance(state, dict):
        return {k: map_state(v, fn) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(v, fn) for v in state)
    return state  # ints (e.g. a position counter) are shared by all rows


def first_tensor(state: State) -> torch.Tensor | None:
    """The first tensor of a nested state (its leading dimension is the number of rows)."""
    if isinstance(state, torch.Tensor):
        return state
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        state = [getattr(state, f.name) for f in dataclasses.fields(state)]
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def stays_grouped(index: torch.Tensor, rows: int, groups: int) -> bool:
    """Whether ``select_state(index)`` over ``rows`` rows in ``groups`` equal consecutive groups keeps
    every new row in its group, groups in order with equally many rows each (what a beam planner
    does), so that a state shared per group can stay shared."""
    if len(index) % groups:
        return False
    expected = torch.arange(groups, device=index.device).repeat_interleave(len(index) // groups)
    return torch.equal(torch.div(index, rows // groups, rounding_mode="floor"), expected)


class SequenceCore(nn.Module):
    """Base class: subclasses define ``Options`` (a dataclass), forward, init_state and step."""

    supports_resets: bool = False
    # Ops that int8 quantization leaves in float, with the reason (listed in quantization reports).
    float_ops: dict[str, str] = {}

    @dataclass
    class Options:
        pass

    def __init__(self, cfg: CoreConfig, options: Any = None):
        super().__init__()
        self.cfg = cfg
        self.options = options if options is not None else self.Options()

    def forward(self, x: torch.Tensor, resets: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32) -> State:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def freeze_step(self) -> None:
        """Precompute what the step form derives from the parameters, for a model that is done
        training (a planning copy); cores with nothing to precompute keep this no-op."""

    def select_state(self, state: State, index: torch.Tensor) -> State:
        return map_state(state, lambda t: t.index_select(0, index))

    def branch_state(self, state: State, copies: int) -> State:
        tensor = first_tensor(state)
        index = torch.arange(tensor.shape[0], device=tensor.device).repeat_interleave(copies)
        return self.select_state(state, index)

    def check_resets(self, resets: torch.Tensor | None) -> None:
        if resets is not None and not self.supports_resets:
            raise ResetsUnsupported(
                f"the '{type(self).__name__}' core cannot run on packed episodes (resets); "
                f"use padded windows (data.packed=false) or a core with resets: gpt, retnet, s5")
