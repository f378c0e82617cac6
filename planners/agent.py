"""A trained model as an agent, for notebooks and your own loops.

    from planners.agent import Agent
    agent = Agent.from_checkpoint("runs/halfcheetah-medium-s5-cpu", planner="policy")
    obs, _ = env.reset(seed=0)
    agent.reset()
    while True:
        action = agent.act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        agent.record(reward)
        if terminated or truncated:
            break

The agent keeps its own token history (the last transitions the planner reads as context), so
``act`` takes raw observations; ``record`` adds the reward of the action just taken. Observations
may be batched (``[E, O]`` after ``reset(envs=E)``), which plans all environments in one call.
"""
from __future__ import annotations

import numpy as np
import torch

from planners import build_planner, check_planner_inputs
from planners.beam import plan_actions
from planners.recipe import resolve_planning
from planners.rollout import History, check_finite, load_for_eval, transition_tokens
from trajectory.config import EvalConfig
from trajectory.configutil import ConfigError


class Agent:
    def __init__(self, model, discretizer, layout, cfg: EvalConfig, device: str | torch.device = "cpu"):
        self.model, self.discretizer, self.layout, self.cfg = model, discretizer, layout, cfg
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.planner = build_planner(model, discretizer, layout, cfg, self.generator)
        self.history: History | None = None
        self._pending: np.ndarray | None = None  # tokens of the transition awaiting its reward

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", **settings) -> Agent:
        """``settings``: any :class:`~trajectory.config.EvalConfig` field (planner, beam_width,
        quantize, ...); the model is loaded as ``eval.py`` loads it."""
        cfg = EvalConfig(checkpoints_path=path, device=device, **settings)
        cfg, _ = resolve_planning(cfg, settings)  # planner=recipe: the run's own, settings win
        check_planner_inputs(cfg)
        checkpoint, model = load_for_eval(cfg, torch.device(device))
        return cls(model, checkpoint.discretizer, checkpoint.layout, cfg, device)

    def reset(self, envs: int = 1, max_steps: int | None = None) -> None:
        """Forget the history; the next ``act`` starts ``envs`` new episodes."""
        self.history = History(envs, max_steps or self.cfg.max_episode_steps, self.layout)
        self._pending = None

    def act(self, obs: np.ndarray) -> np.ndarray:
        """obs [O] or [E, O] (raw) -> action [A] or [E, A] (float32, in the action space)."""
        if self.history is None:
            self.reset(1 if np.ndim(obs) == 1 else len(obs))
        if self._pending is not None:
            raise ConfigError("record(reward) the last action's reward before acting again")
        if self.history.length >= self.history.tokens.shape[1]:
            raise ConfigError(f"the episode has reached its {self.history.tokens.shape[1]:,} steps: "
                              f"reset() to start a new one, or reset(max_steps=N) for longer episodes")
        single = np.ndim(obs) == 1
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        o = self.layout.obs_dim
        if obs.shape != (self.history.tokens.shape[0], o):
            raise ConfigError(f"act expects observations of shape {(self.history.tokens.shape[0], o)}"
                              f" (reset(envs=E) for E environments), got {obs.shape}")
        rows = np.arange(len(obs))
        check_finite(obs, rows, self.history.length, self.cfg.env_id or "the environment")
        obs_tokens = self.discretizer.encode(obs, dims=slice(0, o))
        context = self.history.context(rows, obs_tokens, self.planner.context_transitions)
        plan = self.planner.plan(torch.as_tensor(context, device=self.device))
        act_tokens, actions = plan_actions(plan, self.discretizer, o)
        self._pending = np.concatenate([obs_tokens, act_tokens], axis=1)
        return actions[0] if single else actions

    def record(self, reward) -> None:
        """The reward(s) of the action ``act`` returned last, completing that transition."""
        if self._pending is None:
            raise ConfigError("record(reward) follows act(obs)")
        rewards = np.atleast_1d(np.asarray(reward, dtype=np.float64))
        if rewards.shape != (len(self._pending),):
            raise ConfigError(f"record expects {len(self._pending)} reward(s), one per environment, "
                              f"got shape {rewards.shape}")
        if not np.isfinite(rewards).all():
            raise ConfigError(f"record got a reward that is not finite ({rewards.tolist()}): the "
                              f"environment's reward is broken; the history is left as it was")
        obs_tokens, act_tokens = np.split(self._pending, [self.layout.obs_dim], axis=1)
        self.history.append(np.arange(len(rewards)),
                            transition_tokens(self.discretizer, self.layout, obs_tokens, act_tokens,
                                              rewards))
        self.history.advance()
        self._pending = None
