"""Beam-search planning over a trajectory model (Janner et al., 2021, Alg. 1), batched over envs.

Per environment step, for E environments at once:

1. prefill the context (the last transitions and the current observation) in one parallel call;
2. for each of ``beam_steps`` transitions: expand every beam ``sample_expand`` times (``beam_width *
   sample_expand`` copies of the single root at the first step), sample the action tokens, read the
   reward and the value-to-go as expectations over bin centres, score each beam by its discounted
   rewards plus the discounted value, keep the best ``beam_width`` beams per environment, then
   decode the next observation greedily (``k_obs=1``);

   with ``plan_value=critic`` a plan is valued by the run's critic instead of the model's value
   token: its discounted predicted rewards before its last action plus the discounted Q of that
   action at the planned observation, sum_{k<t} g^k r_k + g^t Q(s_t, a_t), and every expansion
   gives its first copy the median action (the others drawn), as the critic planner's candidates;
   one step of it ranks exactly the critic planner's candidates by the same Q;
3. return the first action of every environment's best beam.

Rows are always ordered environment-major ([E, beams] flattened), so pruning is a per-environment
top-k and every reordering goes through ``model.select_state``. The model is used only through
``init_state`` / ``step`` / ``select_state`` (and ``branch_state`` where it has one, which keeps each
environment's context once for all its beams): a cached core decodes a token in O(1) or O(L) work;
:class:`RecomputingModel` gives the same interface by re-running the whole sequence (the way the
original projects decoded), for tests and benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from planners.estimates import read_scalar, token_values
from planners.sampling import greedy, median_or_drawn, sample
from trajectory.config import EvalConfig
from trajectory.models.ops.scopes import op_group
from trajectory.models.trajectory_model import TokenLayout


class RecomputingModel:
    """The planner interface without caches: every step re-runs the parallel form on all tokens."""

    def __init__(self, model):
        self.model = model

    def init_state(self, batch_size: int, device, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch_size, 0, dtype=torch.long, device=device)

    def step(self, tokens: torch.Tensor, state: torch.Tensor):
        seq = torch.cat([state, tokens.long()], dim=1)
        return self.model(seq)[:, -tokens.shape[1]:], seq

    def select_state(self, state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)


class PlainStateModel:
    """A model seen without ``branch_state``: every beam copies its environment's whole context (the
    planner's behaviour before shared prefixes; kept as the reference in benchmarks and tests)."""

    def __init__(self, model):
        self.model = model

    def init_state(self, batch_size: int, device, dtype=torch.float32):
        return self.model.init_state(batch_size, device, dtype)

    def step(self, tokens: torch.Tensor, state):
        return self.model.step(tokens, state)

    def select_state(self, state, index: torch.Tensor):
        return self.model.select_state(state, index)


class ContextSharingModel:
    """A model whose beams share only the environment's context: after the first branch of a plan,
    a beam's copies each copy what it decoded (the planner's behaviour before copies shared their
    beam; kept as a reference in benchmarks and tests)."""

    def __init__(self, model):
        self.model, self.rows, self.device, self.branched = model, 0, None, False

    def init_state(self, batch_size: int, device, dtype=torch.float32):
        self.rows, self.device, self.branched = batch_size, device, False
        return self.model.init_state(batch_size, device, dtype)

    def step(self, tokens: torch.Tensor, state):
        self.rows = tokens.shape[0]
        return self.model.step(tokens, state)

    def select_state(self, state, index: torch.Tensor):
        self.rows = len(index)
        return self.model.select_state(state, index)

    def branch_state(self, state, copies: int):
        if not self.branched:  # the context, once per environment
            self.branched = True
            return self.model.branch_state(state, copies)
        return self.select_state(state, torch.arange(self.rows, device=self.device).repeat_interleave(copies))


@dataclass
class Plan:
    actions: torch.Tensor  # [E, beam_steps, act_dim] action tokens of each env's best beam
    rewards: torch.Tensor  # [E, beam_steps] predicted rewards along it
    value: torch.Tensor  # [E] predicted value-to-go at its end
    score: torch.Tensor  # [E] what the plan was ranked by (its return estimate)
    log_likelihood: torch.Tensor  # [E] log-probability of its action and observation tokens
    observed_log_likelihood: torch.Tensor  # [E] mean log p of the current observation's tokens
                                           # given the past (NaN without a past): surprise
    first_action: torch.Tensor | None = None  # [E, A] the action to take now, in the action space,
                                              # where it is not the first action tokens' bin centres


def plan_actions(plan: Plan, discretizer, obs_dim: int, offset: int = 0) -> tuple:
    """The action tokens [E, A] (numpy) at ``offset`` of every env's plan and the actions [E, A]
    (float32) to send to the environments: the tokens' bin centres, or ``plan.first_action`` at
    offset 0 where the planner gave one (its tokens are then the bins those actions fall in)."""
    act_dim = plan.actions.shape[-1]
    dims = slice(obs_dim, obs_dim + act_dim)
    if offset == 0 and plan.first_action is not None:
        actions = plan.first_action.float().cpu().numpy()
        return discretizer.encode(actions, dims=dims), actions
    tokens = plan.actions[:, offset].cpu().numpy()
    return tokens, discretizer.decode(tokens, dims=dims).astype(np.float32)


def observed_log_likelihood(logits: torch.Tensor, context: torch.Tensor, obs_dim: int) -> torch.Tensor:
    """Mean log-probability the model gave the tokens of the context's last observation, each given
    everything before it.  logits [E, L, V] of the prefill, context [E, L] -> [E]."""
    if context.shape[1] <= obs_dim:  # no transition before it: nothing to condition on
        return torch.full((context.shape[0],), float("nan"), device=context.device)
    predicted = logits[:, -obs_dim - 1:-1].float().log_softmax(-1)  # [E, O, V]
    return predicted.gather(-1, context[:, -obs_dim:, None].long()).squeeze(-1).mean(-1)


def max_context_transitions(layout: TokenLayout, beam_steps: int) -> int:
    """How many past transitions fit in the model's window next to the current observation and a
    ``beam_steps`` plan (the last planned observation is never decoded)."""
    o, a, td = layout.obs_dim, layout.act_dim, layout.transition_dim
    planned = beam_steps * (a + 1) + (beam_steps - 1) * (o + 1)  # tokens fed while planning
    free = layout.max_tokens - o - planned
    if free < 0:
        raise ValueError(f"beam_steps={beam_steps} does not fit the model's window of "
                         f"{layout.seq_len} transitions; lower beam_steps or train with a longer "
                         f"data.seq_len")
    return free // td


def random_context(layout: TokenLayout, cfg: EvalConfig, n_envs: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Random tokens shaped like a planning context (as many whole transitions as fit, then an
    observation): what benchmarks and profiles plan on, since cost does not depend on the values."""
    n = min(cfg.beam_context, max_context_transitions(layout, cfg.beam_steps))
    return torch.randint(0, layout.vocab, (n_envs, n * layout.transition_dim + layout.obs_dim),
                         generator=generator)


def feed(model, tokens: torch.Tensor, state):
    """Feed tokens [R] or [R, t] to a step-form model; the logits of the next token [R, V] and the
    new state."""
    if tokens.dim() == 1:
        tokens = tokens[:, None]
    with op_group("model"):  # inside the planner's scope: the model's ops are grouped by kind
        logits, state = model.step(tokens, state)
    return logits[:, -1].float(), state


def prefill(model, context: torch.Tensor, obs_dim: int):
    """The context [E, L] in one parallel call: the next token's logits [E, V], the state, and the
    model's surprise at the current observation (see :func:`observed_log_likelihood`)."""
    state = model.init_state(context.shape[0], context.device)
    with op_group("model"):
        logits, state = model.step(context, state)
    return logits[:, -1].float(), state, observed_log_likelihood(logits, context, obs_dim)


def branch(model, state, copies: int, index: torch.Tensor):
    """Every row of the state becomes ``copies`` rows (``index`` repeats each row ``copies`` times):
    through the model's ``branch_state`` where it has one (an environment's context, or a beam's
    tokens, is then kept once for all its copies), else by copying rows with ``select_state``."""
    if hasattr(model, "branch_state"):
        return model.branch_state(state, copies)
    return model.select_state(state, index)


def rows(index: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The rows ``index`` of every tensor (``index_select``: cheaper than indexing with a tensor)."""
    return [t.index_select(0, index) for t in tensors]


def token_log_prob(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """log p(token) under the unfiltered distribution.  logits [R, V], token [R] -> [R]."""
    logits = logits.float()  # the token's logit less the log-normalizer: no [R, V] log_softmax
    return logits.gather(-1, token[:, None].long()).squeeze(-1) - logits.logsumexp(-1)


def next_observation(model, logits: torch.Tensor, state, obs_dim: int, cfg: EvalConfig,
                     generator: torch.Generator | None = None):
    """After a planned transition's value logits: feed its value token (greedily: the model never
    reads it), then decode the next observation, greedily (``k_obs=1``) or filtered (``k_obs`` /
    ``cdf_obs``). Returns the logits and state after it,
    its tokens [R, obs_dim] and their log-probability [R]."""
    logits, state = feed(model, greedy(logits), state)
    tokens, log_lik = [], torch.zeros(logits.shape[0], device=logits.device)
    for _ in range(obs_dim):
        token = sample(logits, generator, cfg.k_obs, cfg.cdf_obs)
        log_lik = log_lik + token_log_prob(logits, token)
        tokens.append(token)
        logits, state = feed(model, token, state)
    return logits, state, torch.stack(tokens, dim=1), log_lik


class BeamPlanner:
    """TT's beam search over the model, batched over environments; with ``plan_value=critic`` the
    plans are valued by the run's critic (``critic``: one given as an object, for tests)."""

    def __init__(self, model, discretizer, layout: TokenLayout, cfg: EvalConfig,
                 generator: torch.Generator | None = None, critic=None):
        self.model, self.discretizer, self.layout, self.cfg = model, discretizer, layout, cfg
        self.generator = generator
        self.critic = None
        if cfg.plan_value == "critic":
            from planners.critic_values import TokenCritic, device_of
            self.critic = TokenCritic(discretizer, layout, cfg, device_of(model), critic)
        self.context_transitions = min(cfg.beam_context, max_context_transitions(layout, cfg.beam_steps))

    def _read(self, logits: torch.Tensor, dim: int) -> torch.Tensor:
        return read_scalar(logits, self.discretizer, dim)

    def info(self) -> dict:
        """For the eval report: the critic that valued the plans, where one did."""
        return self.critic.info() if self.critic is not None else {}

    def _draw(self, logits: torch.Tensor, copies: int) -> torch.Tensor:
        cfg = self.cfg
        if self.critic is not None:  # the critic planner's candidates: a median copy, the rest drawn
            return median_or_drawn(logits, copies, self.generator, cfg.k_act, cfg.cdf_act)
        return sample(logits, self.generator, cfg.k_act, cfg.cdf_act)

    @torch.no_grad()
    def plan(self, context: torch.Tensor) -> Plan:
        """context: [E, n * transition_dim + obs_dim] tokens, whole transitions then the current
        observation. Returns every environment's best plan."""
        with op_group("sampling_beam"):  # what is not the model: sampling, scoring, reordering
            return self._plan(context)

    def _plan(self, context: torch.Tensor) -> Plan:
        cfg, lay = self.cfg, self.layout
        o, a = lay.obs_dim, lay.act_dim
        envs, device = context.shape[0], context.device
        logits, state, surprise = prefill(self.model, context, o)
        discounts = cfg.discount ** torch.arange(cfg.beam_steps + 1, device=device, dtype=torch.float32)
        actions = torch.zeros(envs, 0, a, dtype=torch.long, device=device)
        rewards = torch.zeros(envs, 0, device=device)
        log_lik = torch.zeros(envs, device=device)
        obs = context[:, -o:]  # [rows, O] each row's observation before its next planned action
        per_env = 1
        for t in range(cfg.beam_steps):
            expand = cfg.beam_width * cfg.sample_expand if t == 0 else cfg.sample_expand
            index = torch.arange(envs * per_env, device=device).repeat_interleave(expand)
            with op_group("reorder"):  # each beam's copies share what it decoded so far
                state = branch(self.model, state, expand, index)
            logits, actions, rewards, log_lik, obs = rows(index, logits, actions, rewards, log_lik, obs)
            per_env *= expand

            step_actions = []
            for _ in range(a):
                token = self._draw(logits, expand)
                step_actions.append(token)
                log_lik = log_lik + token_log_prob(logits, token)
                logits, state = feed(self.model, token, state)
            reward = self._read(logits, o + a)
            logits, state = feed(self.model, greedy(logits), state)  # the reward token, greedily
            value = self._read(logits, o + a + 1)
            actions = torch.cat([actions, torch.stack(step_actions, dim=1)[:, None]], dim=1)
            rewards = torch.cat([rewards, reward[:, None]], dim=1)
            if self.critic is None:
                score = (rewards * discounts[:t + 1]).sum(-1) + value * discounts[t + 1]
            else:  # the rewards before the last action, then Q of that action where it is taken
                q = self.critic.q(obs, actions[:, t])
                score = (rewards[:, :t] * discounts[:t]).sum(-1) + q * discounts[t]

            keep = min(cfg.beam_width, per_env)
            top = score.view(envs, per_env).topk(keep, dim=-1).indices  # sorted: best first
            index = (top + torch.arange(envs, device=device)[:, None] * per_env).reshape(-1)
            with op_group("reorder"):
                state = self.model.select_state(state, index)
            logits, actions, rewards, score, value, log_lik, obs = rows(
                index, logits, actions, rewards, score, value, log_lik, obs)
            per_env = keep

            if t < cfg.beam_steps - 1:  # the next observation, for the next planned transition
                logits, state, obs, obs_log_lik = next_observation(self.model, logits, state, o, cfg,
                                                                   self.generator)
                log_lik = log_lik + obs_log_lik
        best = torch.arange(envs, device=device) * per_env  # index 0 of each env: the top beam
        first = self._average_first_action(actions[:, 0], score, envs) if cfg.average_actions else None
        return Plan(actions[best], rewards[best], value[best], score[best], log_lik[best], surprise,
                    first)

    def _average_first_action(self, first: torch.Tensor, score: torch.Tensor, envs: int) -> torch.Tensor:
        """Every env's kept beams' first actions [E * P, A] (tokens) averaged in the action space with
        weights softmax(score / (average_actions x the std of the env's scores)): near 0 the best
        beam's, large the plain mean. [E, A] float32."""
        a = first.shape[-1]
        o = self.layout.obs_dim
        centres = torch.as_tensor(self.discretizer.centres[o:o + a], dtype=torch.float32,
                                  device=first.device)  # [A, V]
        values = token_values(centres, first).view(envs, -1, a)
        score = score.float().view(envs, -1)
        scale = self.cfg.average_actions * score.std(dim=1, keepdim=True).clamp_min(1e-6)
        weights = ((score - score.max(dim=1, keepdim=True).values) / scale).softmax(dim=1)
        return (weights[..., None] * values).sum(dim=1)
