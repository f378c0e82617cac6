"""Acting from the model's own action distribution, with no search: the baseline of every planner.

Per env step, for E environments at once: prefill the context, then choose the action tokens one
dimension at a time, each conditioned on the ones before: the median of the token's distribution
(``policy_actions=median``, the default: for data made by a policy that squashes a Gaussian, its
mean action), the most likely token (``greedy``) or a draw filtered by ``k_act`` / ``cdf_act``
(``sample``). The model then predicts the step's reward and the value after it, for
the report only: the prefill, one call per action dimension and one for the reward, on one row per
env (beam search at TT's settings: 108 calls on up to ``beam_width * sample_expand`` rows).
"""
from __future__ import annotations

import torch

from planners.beam import Plan, feed, max_context_transitions, prefill, token_log_prob
from planners.estimates import read_scalar
from planners.sampling import greedy, median, sample
from trajectory.config import EvalConfig
from trajectory.models.ops.scopes import op_group
from trajectory.models.trajectory_model import TokenLayout


class PolicyPlanner:
    """The model's own action, one dimension at a time; ``plan`` returns a one-transition plan."""

    def __init__(self, model, discretizer, layout: TokenLayout, cfg: EvalConfig,
                 generator: torch.Generator | None = None):
        self.model, self.discretizer, self.layout, self.cfg = model, discretizer, layout, cfg
        self.generator = generator
        self.context_transitions = min(cfg.beam_context, max_context_transitions(layout, 1))

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.policy_actions == "greedy":
            return greedy(logits)
        if self.cfg.policy_actions == "median":
            return median(logits)
        return sample(logits, self.generator, self.cfg.k_act, self.cfg.cdf_act)

    @torch.no_grad()
    def plan(self, context: torch.Tensor) -> Plan:
        """context: [E, n * transition_dim + obs_dim] tokens -> a one-transition plan per env."""
        with op_group("sampling_beam"):
            o, a = self.layout.obs_dim, self.layout.act_dim
            logits, state, surprise = prefill(self.model, context, o)
            tokens, log_lik = [], torch.zeros(context.shape[0], device=context.device)
            for _ in range(a):
                token = self._choose(logits)
                tokens.append(token)
                log_lik = log_lik + token_log_prob(logits, token)
                logits, state = feed(self.model, token, state)
            reward = read_scalar(logits, self.discretizer, o + a)
            logits, _ = feed(self.model, greedy(logits), state)
            value = read_scalar(logits, self.discretizer, o + a + 1)
            score = reward + self.cfg.discount * value
            return Plan(torch.stack(tokens, dim=1)[:, None], reward[:, None], value, score, log_lik,
                        surprise)
