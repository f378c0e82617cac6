"""Candidate first actions followed in the model's imagination by its median policy.

A diagnostic of how the model itself would rank actions (``benchmarks/action_ranking.py``): every
env's context is branched into ``copies`` rows whose first action comes from a given chooser and
whose every later action is the median one, for ``cfg.beam_steps`` transitions; observations are
decoded as the beam planner decodes them. A row's score is its discounted predicted rewards plus
the discounted value after the last one, as the beam planner scores a plan.
"""
from __future__ import annotations

from typing import Callable

import torch

from planners.beam import branch, feed, next_observation, prefill, token_log_prob
from planners.estimates import read_scalar
from planners.sampling import greedy, median
from trajectory.config import EvalConfig
from trajectory.models.ops.scopes import op_group
from trajectory.models.trajectory_model import TokenLayout

FirstToken = Callable[[int, torch.Tensor], torch.Tensor]  # (action dimension, logits [R, V]) -> [R]


def imagine(model, discretizer, layout: TokenLayout, cfg: EvalConfig, context: torch.Tensor,
            copies: int, first_token: FirstToken, generator: torch.Generator | None = None) -> dict:
    """context [E, L] -> the rows' action tokens [E * copies, steps, A], predicted rewards
    [E * copies, steps], value after the last [E * copies], score, log-likelihood of their tokens,
    and the context's surprise [E] (rows env-major)."""
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
        rewards[:, t] = read_scalar(logits, discretizer, o + a)
        logits, state = feed(model, greedy(logits), state)  # the reward token, greedily
        value = read_scalar(logits, discretizer, o + a + 1)
        if t < steps - 1:
            logits, state, _, obs_log_lik = next_observation(model, logits, state, o, cfg, generator)
            log_lik = log_lik + obs_log_lik
    discounts = cfg.discount ** torch.arange(steps + 1, device=device, dtype=torch.float32)
    score = (rewards * discounts[:steps]).sum(-1) + value * discounts[steps]
    return {"actions": actions, "rewards": rewards, "value": value, "score": score,
            "log_likelihood": log_lik, "surprise": surprise}
