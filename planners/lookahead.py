"""Policy rollouts in the model: compare a few first actions by what the model's own policy makes
of each, then take the best (a rollout algorithm over the learned model).

Per env step, for E environments at once: prefill the context, branch it into ``beam_width``
candidates, choose their first action (candidate 0 the median action, the others drawn as the beam
planner draws: ``cdf_act`` / ``k_act`` / ``act_window``), then let every candidate go on for
``beam_steps`` transitions in the model's imagination with the median action at every later step
and the observations decoded as the beam planner decodes them (``k_obs``/``cdf_obs``, or
``obs_median``). A candidate's score is its discounted predicted rewards plus the discounted value
after the last one, as in the beam planner; the best candidate's first action is taken.

Where the beam search keeps the candidates whose *sampled* futures score best, this planner asks of
each first action only how the model's most typical continuation fares: it never ranks a candidate
by a lucky draw further down its plan, and the continuation is the policy the data supports.
"""
from __future__ import annotations

from typing import Callable

import torch

from planners.beam import BeamPlanner, Plan, branch, feed, next_observation, prefill, token_log_prob
from planners.estimates import read_scalar
from planners.sampling import greedy, median, median_or_drawn
from trajectory.config import EvalConfig
from trajectory.models.ops.scopes import op_group
from trajectory.models.trajectory_model import TokenLayout

FirstToken = Callable[[int, torch.Tensor], torch.Tensor]  # (action dimension, logits [R, V]) -> [R]


def imagine(model, discretizer, layout: TokenLayout, cfg: EvalConfig, context: torch.Tensor,
            copies: int, first_token: FirstToken, generator: torch.Generator | None = None,
            quantile: float | None = None) -> dict:
    """Every env's context [E, L] as ``copies`` rows (env-major) whose first action comes from
    ``first_token`` and whose every later action is the median one, for ``cfg.beam_steps``
    transitions. Returns the rows' action tokens [E * copies, steps, A], predicted rewards
    [E * copies, steps], value after the last [E * copies], score (discounted rewards plus the
    discounted value), log-likelihood of their tokens, and the context's surprise [E]."""
    o, a = layout.obs_dim, layout.act_dim
    envs, device = context.shape[0], context.device
    steps = cfg.beam_steps
    logits, state, surprise = prefill(model, context, o)
    index = torch.arange(envs, device=device).repeat_interleave(copies)
    with op_group("reorder"):
        state = branch(model, state, copies, index)
    logits = logits.index_select(0, index)
    rows = envs * copies
    actions = torch.zeros(rows, steps, a, dtype=torch.long, device=device)
    rewards = torch.zeros(rows, steps, device=device)
    log_lik = torch.zeros(rows, device=device)
    for t in range(steps):
        for j in range(a):
            token = first_token(j, logits) if t == 0 else median(logits)
            actions[:, t, j] = token
            log_lik = log_lik + token_log_prob(logits, token)
            logits, state = feed(model, token, state)
        rewards[:, t] = read_scalar(logits, discretizer, o + a, quantile)
        logits, state = feed(model, greedy(logits), state)  # the reward token, greedily
        value = read_scalar(logits, discretizer, o + a + 1, quantile)
        if t < steps - 1:
            logits, state, _, obs_log_lik = next_observation(model, logits, state, o, cfg, generator)
            log_lik = log_lik + obs_log_lik
    discounts = cfg.discount ** torch.arange(steps + 1, device=device, dtype=torch.float32)
    score = (rewards * discounts[:steps]).sum(-1) + value * discounts[steps]
    return {"actions": actions, "rewards": rewards, "value": value, "score": score,
            "log_likelihood": log_lik, "surprise": surprise}


class LookaheadPlanner(BeamPlanner):
    """``beam_width`` first actions (the median one and draws), each followed by the median policy
    for ``beam_steps`` transitions in the model; the first action of the best. Settings, context
    and reading of rewards and values as the beam planner's."""

    def _first_token(self, j: int, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return median_or_drawn(logits, cfg.beam_width, self.generator, cfg.k_act, cfg.cdf_act,
                                cfg.act_window)

    @torch.no_grad()
    def plan(self, context: torch.Tensor) -> Plan:
        """context: [E, n * transition_dim + obs_dim] tokens -> every env's best candidate."""
        with op_group("sampling_beam"):
            k = self.cfg.beam_width
            out = imagine(self.model, self.discretizer, self.layout, self.cfg, context, k,
                          self._first_token, self.generator, self.quantile)
            envs = context.shape[0]
            best = out["score"].view(envs, k).argmax(dim=1) + torch.arange(envs, device=context.device) * k
            return Plan(out["actions"][best], out["rewards"][best], out["value"][best],
                        out["score"][best], out["log_likelihood"][best], out["surprise"])
