"""The trajectory model: discretized transitions in, next-token distributions out (Janner et al., 2021).

A transition is ``transition_dim = obs_dim + act_dim + 2`` tokens: observation, action, reward and
value-to-go, each dimension discretized into ``vocab`` bins. A window of transitions is flattened
into one token sequence; position ``p`` holds dimension ``p % transition_dim``.

    tokens [B, L] -> per-dimension embedding -> core [B, L, D] -> final norm -> head of position's dim

Two departures from a plain language model, both from the Trajectory Transformer:

* Embeddings are per dimension (token ``k`` of dimension ``j`` is row ``j * vocab + k``) and the output
  head is per dimension too (one linear map per position-in-transition, batched like TT's EinLinear).
* Value tokens are never visible as context. TT hides them with its attention mask; a convolution or
  recurrence has no such mask, so for every core the value token's embedding is replaced by a learned
  "blank" vector before the core. Outputs at later positions then cannot depend on earlier values.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from trajectory.config import ModelConfig
from trajectory.models.cores import CoreConfig, build_core
from trajectory.models.ops.scopes import op_group


@dataclass
class TokenLayout:
    """Shape of the token stream, fixed by the dataset."""

    obs_dim: int
    act_dim: int
    vocab: int  # bins per dimension
    seq_len: int  # transitions per training window

    @property
    def transition_dim(self) -> int:
        return self.obs_dim + self.act_dim + 2

    @property
    def max_tokens(self) -> int:
        return self.seq_len * self.transition_dim

    def group_of_dim(self) -> torch.Tensor:
        """Group index (0 obs, 1 action, 2 reward, 3 value) of each transition dimension."""
        groups = [0] * self.obs_dim + [1] * self.act_dim + [2, 3]
        return torch.tensor(groups, dtype=torch.long)


@dataclass
class ModelState:
    """What decoding carries between steps: the core's state and the tokens seen (the next token's
    place in the transition)."""

    core: Any  # the core's own state (e.g. GPTState, a list of HyenaLayerState)
    pos: int = 0


GROUP_NAMES = ("obs", "act", "reward", "value")
COMPLEX_OPS_NOT_COMPILED = "Torchinductor does not support code generation for complex"
STEP_RECOMPILE_LIMIT = 64  # graphs of the compiled step: see TrajectoryModel.compile_step
_COMPILED_STEPS = 0  # models whose step this process compiled


class EinLinear(nn.Module):
    """``n`` independent linear maps; map ``i`` is applied to slot ``i``.  x: [..., n, d_in]."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight if slots is None else self.weight[slots]  # [n, d_in, d_out]
        return torch.einsum("...nd,ndv->...nv", x, weight)


class TrajectoryModel(nn.Module):
    def __init__(self, cfg: ModelConfig, layout: TokenLayout):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        td, vocab = layout.transition_dim, layout.vocab
        core_cfg = CoreConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                              max_len=layout.max_tokens, dropout=cfg.dropout)
        self.embedding = nn.Embedding(td * vocab, cfg.d_model)
        self.value_blank = nn.Parameter(torch.zeros(cfg.d_model))
        self.drop = nn.Dropout(cfg.embedding_dropout)
        self.core = build_core(cfg.core, core_cfg, cfg.core_options)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.heads = EinLinear(td, cfg.d_model, vocab)
        nn.init.normal_(self.embedding.weight, std=0.02)
        group = layout.group_of_dim()
        weights = torch.ones(td)
        weights[group == 1] = cfg.action_weight
        weights[group == 2] = cfg.reward_weight
        weights[group == 3] = cfg.value_weight
        self.register_buffer("dim_weights", weights, persistent=False)
        self.register_buffer("dim_groups", group, persistent=False)

    # -- embedding and heads, shared by the parallel and the step forms
    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens [B, t] whose first token sits at absolute position ``start`` -> [B, t, D]."""
        td = self.layout.transition_dim
        dims = (torch.arange(tokens.shape[1], device=tokens.device) + start) % td  # [t]
        x = self.embedding(tokens.long() + dims * self.layout.vocab)
        is_value = (dims == td - 1)[None, :, None]
        x = torch.where(is_value, self.value_blank.to(x.dtype), x)
        return self.drop(x)

    def _heads(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Features [B, t, D] at absolute positions start.. -> logits [B, t, vocab]."""
        td = self.layout.transition_dim
        dims = (torch.arange(h.shape[1], device=h.device) + start) % td  # [t]
        if start == 0:  # the training path: pad to whole transitions, one batched einsum
            b, t, d = h.shape
            pad = -t % td
            if pad:
                h = torch.cat([h, h.new_zeros(b, pad, d)], dim=1)
            return self.heads(h.view(b, -1, td, d)).reshape(b, t + pad, -1)[:, :t]
        return self.heads(h, slots=dims)

    def forward(self, tokens: torch.Tensor, resets: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L] (the window starts at a transition boundary) -> logits [B, L, vocab].

        The logits at position p are the model's distribution of token p + 1.
        """
        with op_group("embedding_heads"):
            x = self._embed(tokens, 0)
        h = self.core(x, resets=resets)
        with op_group("embedding_heads"):
            return self._heads(self.norm(h), 0)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted cross-entropy; logits [B, L, V] predict targets [B, L] where mask [B, L] is 1.

        Position p's target is token p + 1, so its dimension is (p + 1) % transition_dim.
        Returns the loss and the unweighted mean loss of each token group (for logging).
        """
        td = self.layout.transition_dim
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).long(),
                             reduction="none").view_as(targets)
        target_dims = (torch.arange(targets.shape[1], device=targets.device) + 1) % td
        mask = mask.to(ce.dtype)
        weighted = ce * self.dim_weights[target_dims] * mask
        loss = weighted.sum() / mask.sum().clamp_min(1.0)
        groups = self.dim_groups[target_dims]  # [L]
        per_group = {}
        for index, name in enumerate(GROUP_NAMES):
            selected = mask * (groups == index).to(mask.dtype)
            per_group[name] = (ce * selected).sum().detach() / selected.sum().clamp_min(1.0)
        return loss, per_group

    # -- step form for planning
    def init_state(self, batch_size: int, device, dtype=torch.float32) -> ModelState:
        return ModelState(self.core.init_state(batch_size, device, dtype))

    def compile_step(self, **options) -> None:
        """Run the one-token step (a planner's inner loop) through ``torch.compile`` from now on.

        Chunks (a planner's prefill, whose length varies) and anything with gradients stay eager.
        The compiled step computes the same function; fused kernels may round differently in the
        last bits. The first calls pay the compilation (up to a minute or two per core on 2 CPU
        cores; torch's on-disk cache makes later processes faster). ``options`` go to
        ``torch.compile``.

        A planner's step meets several state forms (an environment's context shared, then a beam's
        middle level too; empty and growing suffixes; contexts that grow at an episode's start;
        fewer rows after pruning), each a graph of its own. Past dynamo's recompile limit (8 by
        default) the step would silently run eager for the rest of the process, so it is raised
        to ``STEP_RECOMPILE_LIMIT`` per compiled model.

        Planning only: the core's step-form constants are frozen first (``SequenceCore.freeze_step``),
        so a model compiled here is not trained further."""
        import torch._dynamo
        global _COMPILED_STEPS
        self.core.freeze_step()
        # every model's graphs are entries of the one code object TrajectoryModel._step, so a
        # process that compiles several models (a benchmark's routes) needs the limit per model
        _COMPILED_STEPS += 1
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, STEP_RECOMPILE_LIMIT * _COMPILED_STEPS)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit,
                                                 4 * STEP_RECOMPILE_LIMIT * _COMPILED_STEPS)
        self._compiled_token_step = torch.compile(self._step, **options)

    def step(self, tokens: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """Feed tokens [B, t] after the ``state.pos`` tokens already seen -> logits [B, t, V]."""
        compiled = self.__dict__.get("_compiled_token_step")
        if compiled is not None and tokens.shape[1] == 1 and not torch.is_grad_enabled():
            with warnings.catch_warnings():  # S5's complex scan stays eager inside the graph, as meant
                warnings.filterwarnings("ignore", COMPLEX_OPS_NOT_COMPILED)
                return compiled(tokens, state)
        return self._step(tokens, state)

    def _step(self, tokens: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        start = state.pos
        with op_group("embedding_heads"):
            x = self._embed(tokens, start)
        h, core_state = self.core.step(x, state.core)
        with op_group("embedding_heads"):
            logits = self._heads(self.norm(h), start)
        return logits, ModelState(core_state, start + tokens.shape[1])

    def select_state(self, state: ModelState, index: torch.Tensor) -> ModelState:
        return ModelState(self.core.select_state(state.core, index), state.pos)

    def branch_state(self, state: ModelState, copies: int) -> ModelState:
        """Each row becomes ``copies`` consecutive rows continuing its history (see SequenceCore)."""
        return ModelState(self.core.branch_state(state.core, copies), state.pos)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
