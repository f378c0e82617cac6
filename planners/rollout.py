"""Roll a planner out in N environments at once and write a report (eval.py's job).

All environments step in lockstep and are planned in one batch; an environment that terminates
early drops out of the batch. Report: ``<out>/report.json`` (returns, normalized scores, the dataset's
behaviour return for comparison, timing, settings), tensorboard scalars in ``<out>/tb``, and with
``render=true`` an animation of the first episode.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from planners.beam import BeamPlanner
from trajectory.checkpoint import load_checkpoint
from trajectory.config import EvalConfig
from trajectory.envs import make_env, normalized_score
from trajectory.io import save_json


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


def load_for_eval(cfg: EvalConfig, device: torch.device):
    """The checkpoint and its model, quantized when ``cfg.quantize`` asks (the model's summary of
    quantization is ``model.quantization_info``)."""
    if not cfg.checkpoints_path:
        raise SystemExit("error: checkpoints_path is required, e.g. checkpoints_path=runs/<name>")
    checkpoint = load_checkpoint(cfg.checkpoints_path)
    model = checkpoint.build_model(device)
    info = {"mode": "none"}
    if cfg.quantize != "none":
        from trajectory.quantize import QuantizationError, quantize_checkpoint_model
        if device.type != "cpu":
            raise SystemExit(f"error: int8 quantization runs on the CPU; use --device=cpu "
                             f"with quantize={cfg.quantize}")
        out = os.path.join(os.path.dirname(checkpoint.path.rstrip("/")), "quantized")
        try:
            model, info = quantize_checkpoint_model(checkpoint, model, cfg.quantize,
                                                    cfg.calibration_batches, out_dir=out)
        except QuantizationError as err:
            raise SystemExit(f"error: {err}") from None
    model.quantization_info = info
    return checkpoint, model


def check_env_matches(env, layout, env_id: str, path: str) -> None:
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if (obs_dim, act_dim) != (layout.obs_dim, layout.act_dim):
        raise ValueError(f"{env_id} has observations of {obs_dim} and actions of {act_dim} "
                         f"dimensions, but the model in {path} was trained on {layout.obs_dim} and "
                         f"{layout.act_dim}: pass the env_id the dataset came from")


def rollout(model, discretizer, layout, cfg: EvalConfig, device, progress: bool = True) -> dict:
    """Run ``cfg.n_episodes`` episodes in lockstep; returns returns and timings."""
    from tqdm import tqdm

    envs = [make_env(cfg.env_id, **({"render_mode": "rgb_array"} if cfg.render and i == 0 else {}))
            for i in range(cfg.n_episodes)]
    check_env_matches(envs[0], layout, cfg.env_id, cfg.checkpoints_path or "the model")
    o, a = layout.obs_dim, layout.act_dim
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    planner = BeamPlanner(model, discretizer, layout, cfg, generator)
    obs = np.stack([env.reset(seed=cfg.seed + i)[0] for i, env in enumerate(envs)])
    returns, lengths = np.zeros(len(envs)), np.zeros(len(envs), dtype=int)
    active = np.ones(len(envs), dtype=bool)
    history = History(len(envs), cfg.max_episode_steps, layout)
    frames, plan_tokens = [], None
    planning_seconds, plans = 0.0, 0
    bar = tqdm(range(cfg.max_episode_steps), desc="eval", unit="step", disable=not progress)
    for t in bar:
        rows = np.flatnonzero(active)
        obs_tokens = discretizer.encode(obs[rows], dims=slice(0, o))
        offset = t % max(1, min(cfg.plan_every, cfg.beam_steps))
        if offset == 0 or plan_tokens is None or len(plan_tokens) != len(rows):
            context = history.context(rows, obs_tokens, planner.context_transitions)
            start = time.perf_counter()
            plan_tokens = planner.plan(torch.as_tensor(context, device=device)).actions.cpu().numpy()
            planning_seconds += time.perf_counter() - start
            plans += 1
            offset = 0
        act_tokens = plan_tokens[:, offset]  # [R, A]
        actions = discretizer.decode(act_tokens, dims=slice(o, o + a)).astype(np.float32)
        rewards = np.zeros(len(rows))
        for j, i in enumerate(rows):
            obs[i], rewards[j], terminated, truncated, _ = envs[i].step(actions[j])
            returns[i] += rewards[j]
            lengths[i] += 1
            if terminated or truncated:
                active[i] = False
            if cfg.render and i == 0 and t % 2 == 0:
                frames.append(envs[0].render())
        reward_tokens = discretizer.encode(rewards, dims=o + a)
        row_tokens = np.concatenate([obs_tokens, act_tokens, reward_tokens[:, None],
                                     np.zeros((len(rows), 1), dtype=np.uint8)], axis=1)
        history.append(rows, row_tokens)
        history.advance()
        bar.set_postfix(mean_return=f"{returns.mean():.0f}", refresh=False)
        if not active.any():
            break
    for env in envs:
        env.close()
    return {"returns": returns, "lengths": lengths, "planning_seconds": planning_seconds,
            "plans": plans, "frames": frames, "context_transitions": planner.context_transitions}


def save_animation(frames: list, path: str) -> str | None:
    if not frames:
        return None
    from PIL import Image
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return path


def behaviour_stats(data_info: dict) -> dict:
    """The dataset's episode-return statistics, saved with the checkpoint, for comparison."""
    keys = ("return_mean", "return_std", "return_count", "normalized_mean", "source")
    return {k: data_info[k] for k in keys if k in data_info}


def evaluate(cfg: EvalConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if "," in cfg.quantize:
        raise SystemExit(f"error: eval.py takes one quantize mode, got '{cfg.quantize}' "
                         f"(profile.py compares several)")
    checkpoint, model = load_for_eval(cfg, device)
    folder = "eval" if cfg.quantize == "none" else f"eval_{cfg.quantize}"  # precisions side by side
    out = cfg.out or os.path.join(os.path.dirname(checkpoint.path.rstrip("/")), folder)
    os.makedirs(out, exist_ok=True)
    if cfg.render:
        os.environ.setdefault("MUJOCO_GL", "egl")
    start = time.time()
    try:
        result = rollout(model, checkpoint.discretizer, checkpoint.layout, cfg, device)
    except Exception as err:
        if cfg.render and ("GL" in str(err) or "render" in str(err).lower()):
            raise SystemExit(f"error: no renderer available ({err}); set MUJOCO_GL=egl (GPU/EGL) "
                             f"or MUJOCO_GL=osmesa with libosmesa6 installed, or render=false") from None
        raise
    wall = time.time() - start
    returns = result["returns"]
    scores = normalized_score(cfg.env_id, returns)
    env_steps = int(result["lengths"].max())
    report = {
        "checkpoint": checkpoint.path, "core": checkpoint.config.model.core,
        "returns": returns.round(2).tolist(), "return_mean": float(returns.mean()),
        "return_std": float(returns.std()), "normalized_scores": scores.round(2).tolist(),
        "normalized_mean": float(scores.mean()), "normalized_std": float(scores.std()),
        "behaviour": behaviour_stats(checkpoint.metrics.get("data", {})),
        "episode_lengths": result["lengths"].tolist(), "wall_seconds": wall,
        "ms_per_env_step": 1e3 * wall / max(1, env_steps),
        "planning_ms_per_plan": 1e3 * result["planning_seconds"] / max(1, result["plans"]),
        "context_transitions_used": result["context_transitions"],
        "quantization": model.quantization_info,
        "settings": dict(vars(cfg)),
    }
    report["animation"] = save_animation(result["frames"], os.path.join(out, "episode0.gif"))
    save_json(report, os.path.join(out, "report.json"))
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(os.path.join(out, "tb")) as writer:
        for i, (ret, score) in enumerate(zip(returns, scores)):
            writer.add_scalar("eval/return", ret, i)
            writer.add_scalar("eval/normalized_score", score, i)
        writer.add_scalar("eval/ms_per_env_step", report["ms_per_env_step"], 0)
    print(f"return {returns.mean():.1f} +- {returns.std():.1f}  normalized {scores.mean():.1f}  "
          f"({len(returns)} episodes, {report['ms_per_env_step']:.0f} ms/env step) -> {out}/report.json")
    return report
