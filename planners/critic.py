"""Candidate actions from the trajectory model, ranked by a critic learned from the same data.

Per env step, for E environments at once: prefill the context, branch it into ``beam_width``
candidates, choose their action tokens (candidate 0 the median action, the others drawn as the beam
planner draws: ``cdf_act`` / ``k_act``), and take the candidate whose action the
run's critic (``train_critic.py``: implicit Q-learning on the dataset) values most, Q(s, a) at the
current observation. The model proposes what the data would do here; the critic, fitted to many
transitions where similar actions were taken, judges which of them leads to more return, a ranking
the model's own imagined futures do not give (``benchmarks/action_ranking.py``).

The critic sees the current observation as its tokens' bin centres (the planner reads tokens), and
each candidate as the bin centres of its action tokens: exactly the action sent to the environment.
"""
from __future__ import annotations

import torch

from planners.beam import Plan, branch, feed, max_context_transitions, prefill, token_log_prob
from planners.critic_values import TokenCritic, device_of
from planners.estimates import read_scalar
from planners.sampling import greedy, median_or_drawn
from trajectory.config import EvalConfig
from trajectory.models.ops.scopes import op_group
from trajectory.models.trajectory_model import TokenLayout


class CriticPlanner:
    """``beam_width`` candidate actions of the model's policy (the median one and draws), the one
    the critic values most."""

    def __init__(self, model, discretizer, layout: TokenLayout, cfg: EvalConfig,
                 generator: torch.Generator | None = None, critic=None):
        self.model, self.discretizer, self.layout, self.cfg = model, discretizer, layout, cfg
        self.generator = generator
        # only the first transition is decoded: beam_steps does not shorten the context
        self.context_transitions = min(cfg.beam_context, max_context_transitions(layout, 1))
        self.critic = TokenCritic(discretizer, layout, cfg, device_of(model), critic)

    def _read(self, logits: torch.Tensor, dim: int) -> torch.Tensor:
        return read_scalar(logits, self.discretizer, dim)

    def info(self) -> dict:
        """For the eval report: which critic ranked the candidates, and how it was trained."""
        return self.critic.info()

    @torch.no_grad()
    def plan(self, context: torch.Tensor) -> Plan:
        """context: [E, n * transition_dim + obs_dim] tokens -> every env's best-valued candidate."""
        with op_group("sampling_beam"):
            o, a, k = self.layout.obs_dim, self.layout.act_dim, self.cfg.beam_width
            envs, device = context.shape[0], context.device
            logits, state, surprise = prefill(self.model, context, o)
            index = torch.arange(envs, device=device).repeat_interleave(k)
            with op_group("reorder"):
                state = branch(self.model, state, k, index)
            logits = logits.index_select(0, index)
            tokens, log_lik = [], torch.zeros(envs * k, device=device)
            for _ in range(a):
                token = median_or_drawn(logits, k, self.generator, self.cfg.k_act, self.cfg.cdf_act)
                tokens.append(token)
                log_lik = log_lik + token_log_prob(logits, token)
                logits, state = feed(self.model, token, state)
            reward = self._read(logits, o + a)
            logits, _ = feed(self.model, greedy(logits), state)
            value = self._read(logits, o + a + 1)
            actions = torch.stack(tokens, dim=1)  # [E k, A]
            q = self.critic.q(context[:, -o:].repeat_interleave(k, dim=0), actions).view(envs, k)
            best = q.argmax(dim=1) + torch.arange(envs, device=device) * k
            return Plan(actions[best][:, None], reward[best][:, None], value[best], q.view(-1)[best],
                        log_lik[best], surprise)
