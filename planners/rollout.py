"""Roll a planner out in N environments at once (eval.py's job); the report of what happened is
built by :mod:`planners.report`.

All environments step in lockstep and are planned in one batch; an environment that terminates
early drops out of the batch. Each step records what the planner predicted and what came in an
:class:`~planners.report.EpisodeTrace`.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from planners import build_planner, check_eval_output, check_planner_inputs
from planners.beam import plan_actions
from planners.recipe import describe as describe_recipe
from planners.recipe import resolve_planning
from planners.report import EpisodeTrace, build_report, summary_line, write_report
from trajectory.checkpoint import load_checkpoint
from trajectory.config import EvalConfig
from trajectory.configutil import ConfigError
from trajectory.cpu import thread_advice
from trajectory.envs import make_env, render_kwargs, torso_angle_index
from trajectory.int8_choice import choose_int8_mode
from trajectory.io import disk_full, is_disk_full
from trajectory.models.ops.allocator import reuse_freed_memory
from trajectory.models.ops.decode_attention import set_attention_kernel
from trajectory.score_stats import comparability_warnings


class History:
    """Token history of every environment: [E, steps, transition_dim] uint8."""

    def __init__(self, envs: int, steps: int, layout):
        self.layout = layout
        self.tokens = np.zeros((envs, steps, layout.transition_dim), dtype=np.uint8)
        self.length = 0

    def context(self, rows: np.ndarray, obs_tokens: np.ndarray, transitions: int) -> np.ndarray:
        """The last ``transitions`` whole transitions and the current observation, flattened."""
        start = max(0, self.length - transitions)
        past = self.tokens[rows, start:self.length].reshape(len(rows), -1)
        return np.concatenate([past, obs_tokens], axis=1)

    def append(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        self.tokens[rows, self.length] = tokens

    def advance(self) -> None:
        self.length += 1


def transition_tokens(discretizer, layout, obs_tokens: np.ndarray, act_tokens: np.ndarray,
                      rewards: np.ndarray) -> np.ndarray:
    """One transition per row for the history: observation, action and reward tokens, and a
    placeholder for the value (never read: the model blanks value tokens). -> uint8 [R, D]."""
    reward_tokens = discretizer.encode(rewards, dims=layout.obs_dim + layout.act_dim)
    return np.concatenate([obs_tokens, act_tokens, reward_tokens[:, None],
                           np.zeros((len(rewards), 1), dtype=np.uint8)], axis=1)


def load_for_eval(cfg: EvalConfig, device: torch.device):
    """The checkpoint and its model, quantized when ``cfg.quantize`` asks (the model's summary of
    quantization is ``model.quantization_info``)."""
    if not cfg.checkpoints_path:
        raise ConfigError("checkpoints_path is required, e.g. checkpoints_path=runs/<name>")
    checkpoint = load_checkpoint(cfg.checkpoints_path)
    model = checkpoint.build_model(device)
    info = {"mode": "none"}
    mode = cfg.quantize
    if mode == "auto":
        model_cfg = checkpoint.config.model
        choice = choose_int8_mode(model_cfg.core, model_cfg.d_model, cfg.planner)
        print(f"quantize=auto -> {choice.reason}", flush=True)
        mode, info = choice.mode, {"mode": "none", "auto": choice.reason}
    if mode != "none":
        from trajectory.quantize import QuantizationError, quantize_checkpoint_model
        if device.type != "cpu":
            raise ConfigError(f"int8 quantization runs on the CPU; use --device=cpu "
                             f"with quantize={cfg.quantize}")
        out = os.path.join(os.path.dirname(checkpoint.path.rstrip("/")), "quantized")
        try:
            model, quantized = quantize_checkpoint_model(checkpoint, model, mode, cfg.calibration_batches,
                                                         out_dir=out)
        except QuantizationError as err:
            raise ConfigError(f"{err}") from None
        info = {**quantized, **({"auto": info["auto"]} if "auto" in info else {})}
    model.quantization_info = info
    set_attention_kernel(cfg.attention_kernel)  # before the first plan: "fused" fails here, not later
    if cfg.compile_step:
        model.compile_step()
    return checkpoint, model


def check_env_matches(env, layout, env_id: str, path: str) -> None:
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if (obs_dim, act_dim) != (layout.obs_dim, layout.act_dim):
        raise ValueError(f"{env_id} has observations of {obs_dim} and actions of {act_dim} "
                         f"dimensions, but the model in {path} was trained on {layout.obs_dim} and "
                         f"{layout.act_dim}: pass the env_id the dataset came from")


def check_finite(obs: np.ndarray, rows: np.ndarray, step: int, env_id: str) -> None:
    """NaN or inf would silently encode to an edge bin: stop with the env and step instead."""
    bad = ~np.isfinite(obs).all(axis=1)
    if bad.any():
        raise ConfigError(f"{env_id} returned a non-finite observation in episode "
                          f"{int(rows[bad][0])} at step {step} (the simulation diverged); "
                          f"nothing can be planned from it")


def resolve_env_id(cfg: EvalConfig, checkpoint) -> str:
    """The checkpoint's environment (from its dataset), or ``cfg.env_id`` when that is the same.
    Dimensions cannot tell environments apart (Walker2d and HalfCheetah both have 17 and 6)."""
    trained_on = checkpoint.metrics.get("data", {}).get("env_id")
    if not cfg.env_id:
        if not trained_on:
            raise ConfigError(f"{checkpoint.path} does not record its environment; pass env_id=...")
        return trained_on
    if trained_on and cfg.env_id != trained_on:
        raise ConfigError(f"env_id={cfg.env_id}, but {checkpoint.path} was trained on {trained_on} "
                          f"data; leave env_id empty to use it")
    return cfg.env_id


def rollout(model, discretizer, layout, cfg: EvalConfig, device, progress: bool = True) -> dict:
    """Run ``cfg.n_episodes`` episodes in lockstep (env ``i`` reset with seed ``cfg.seed + i``);
    returns returns, lengths, timings and the :class:`EpisodeTrace`."""
    from tqdm import tqdm

    envs = [make_env(cfg.env_id, **(render_kwargs(cfg.env_id) if cfg.render and i == 0 else {}))
            for i in range(cfg.n_episodes)]
    check_env_matches(envs[0], layout, cfg.env_id, cfg.checkpoints_path or "the model")
    o = layout.obs_dim
    angle_index = torso_angle_index(cfg.env_id)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    planner = build_planner(model, discretizer, layout, cfg, generator)
    obs = np.stack([env.reset(seed=cfg.seed + i)[0] for i, env in enumerate(envs)])
    returns, lengths = np.zeros(len(envs)), np.zeros(len(envs), dtype=int)
    terminal_step = np.full(len(envs), -1, dtype=np.int64)  # where the env ended an episode itself
    active = np.ones(len(envs), dtype=bool)
    history = History(len(envs), cfg.max_episode_steps, layout)
    trace = EpisodeTrace(len(envs), cfg.max_episode_steps)
    frames, plan = [], None
    planning_seconds, plans = 0.0, 0
    bar = tqdm(range(cfg.max_episode_steps), desc=f"eval ({cfg.planner})", unit="step",
               disable=not progress)
    for t in bar:
        rows = np.flatnonzero(active)
        check_finite(obs[rows], rows, t, cfg.env_id)
        obs_tokens = discretizer.encode(obs[rows], dims=slice(0, o))
        offset = t % max(1, min(cfg.plan_every, cfg.beam_steps))
        if (offset == 0 or plan is None or len(plan.actions) != len(rows)
                or offset >= plan.actions.shape[1]):
            context = history.context(rows, obs_tokens, planner.context_transitions)
            start = time.perf_counter()
            plan = planner.plan(torch.as_tensor(context, device=device))
            planning_seconds += time.perf_counter() - start
            plans += 1
            offset = 0
            trace.record_plan(rows, t, plan)
        act_tokens, actions = plan_actions(plan, discretizer, o, offset)  # [R, A] each
        rewards = np.zeros(len(rows))
        for j, i in enumerate(rows):
            obs[i], rewards[j], terminated, truncated, _ = envs[i].step(actions[j])
            returns[i] += rewards[j]
            lengths[i] += 1
            if terminated:
                terminal_step[i] = t
            if terminated or truncated:
                active[i] = False
            if cfg.render and i == 0 and t % 2 == 0:
                frames.append(envs[0].render())
        trace.record_step(rows, t, rewards, obs[rows, angle_index] if angle_index is not None else None)
        history.append(rows, transition_tokens(discretizer, layout, obs_tokens, act_tokens, rewards))
        history.advance()
        bar.set_postfix(mean_return=f"{returns.mean():.0f}",
                        flipped=int((trace.first_flip_step >= 0).sum()), refresh=False)
        if not active.any():
            break
    for env in envs:
        env.close()
    return {"returns": returns, "lengths": lengths, "terminal_step": terminal_step,
            "planning_seconds": planning_seconds,
            "plans": plans, "frames": frames, "context_transitions": planner.context_transitions,
            "trace": trace, "planner_info": getattr(planner, "info", dict)()}


def evaluate(cfg: EvalConfig) -> dict:
    cfg, taken = resolve_planning(cfg)  # planner=recipe: as the run's recipe says
    if taken:
        print(describe_recipe(taken), flush=True)
    check_planner_inputs(cfg)  # before any loading or env work
    reuse_freed_memory()  # planning reallocates large state buffers every reorder
    advice = thread_advice(cfg.threads) if cfg.device == "cpu" else None
    if advice:
        print(advice, flush=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if "," in cfg.quantize:
        raise ConfigError(f"eval.py takes one quantize mode, got '{cfg.quantize}' "
                         f"(profile.py compares several)")
    checkpoint, model = load_for_eval(cfg, device)
    cfg.env_id = resolve_env_id(cfg, checkpoint)
    out = check_eval_output(cfg)
    for warning in comparability_warnings(cfg.n_episodes, cfg.max_episode_steps):
        print(f"warning: {warning}", flush=True)
    if cfg.render:
        os.environ.setdefault("MUJOCO_GL", "egl")
    start = time.time()
    try:
        result = rollout(model, checkpoint.discretizer, checkpoint.layout, cfg, device)
    except Exception as err:
        if cfg.render and ("GL" in str(err) or "render" in str(err).lower()):
            raise ConfigError(f"no renderer available ({err}); set MUJOCO_GL=egl (GPU/EGL) "
                             f"or MUJOCO_GL=osmesa with libosmesa6 installed, or render=false") from None
        raise
    wall = time.time() - start
    report = build_report(cfg, checkpoint, model, result, wall)
    print(summary_line(report, out), flush=True)  # the score first: a failed write cannot lose it
    try:
        write_report(report, result, out)
    except Exception as err:
        if is_disk_full(err, out):
            raise disk_full(out, "the score printed above was not saved") from None
        raise
    return report
