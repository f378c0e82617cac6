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

from planners import build_planner, check_planner
from planners.beam import plan_actions
from trajectory.checkpoint import load_checkpoint
from trajectory.config import EvalConfig
from trajectory.configutil import ConfigError
from trajectory.cpu import thread_advice
from trajectory.envs import (
    has_reference_returns,
    make_env,
    normalized_score,
    render_kwargs,
    torso_angle_index,
    torso_flipped,
)
from trajectory.io import save_json
from trajectory.models.ops.allocator import reuse_freed_memory
from trajectory.models.ops.decode_attention import describe as describe_attention_kernel
from trajectory.models.ops.decode_attention import set_attention_kernel
from trajectory.score_stats import comparability_warnings, failed_episodes, format_score, summarize


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
    model = checkpoint.build_model(device, cfg.weights)
    info = {"mode": "none"}
    if cfg.quantize != "none":
        from trajectory.quantize import QuantizationError, quantize_checkpoint_model
        if device.type != "cpu":
            raise ConfigError(f"int8 quantization runs on the CPU; use --device=cpu "
                             f"with quantize={cfg.quantize}")
        out = os.path.join(os.path.dirname(checkpoint.path.rstrip("/")), "quantized")
        try:
            model, info = quantize_checkpoint_model(checkpoint, model, cfg.quantize,
                                                    cfg.calibration_batches, out_dir=out)
        except QuantizationError as err:
            raise ConfigError(f"{err}") from None
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


class EpisodeTrace:
    """Per step and environment: what the planner predicted and what happened ([E, T], NaN where
    an env had finished), and the first step each env's torso passed 90 degrees (-1: never)."""

    FIELDS = ("predicted_score", "predicted_reward", "reward", "plan_log_likelihood",
              "observed_log_likelihood", "torso_angle")

    def __init__(self, envs: int, steps: int):
        for name in self.FIELDS:
            setattr(self, name, np.full((envs, steps), np.nan, dtype=np.float32))
        self.first_flip_step = np.full(envs, -1, dtype=np.int64)

    def record_plan(self, rows: np.ndarray, t: int, plan) -> None:
        """A new plan's predictions (steps that reuse a plan, plan_every > 1, stay NaN)."""
        self.predicted_score[rows, t] = plan.score.cpu().numpy()
        self.predicted_reward[rows, t] = plan.rewards[:, 0].cpu().numpy()
        self.plan_log_likelihood[rows, t] = plan.log_likelihood.cpu().numpy()
        self.observed_log_likelihood[rows, t] = plan.observed_log_likelihood.cpu().numpy()

    def record_step(self, rows: np.ndarray, t: int, rewards: np.ndarray, angles) -> None:
        self.reward[rows, t] = rewards
        if angles is not None:
            self.torso_angle[rows, t] = angles
            flipped = rows[torso_flipped(angles) & (self.first_flip_step[rows] < 0)]
            self.first_flip_step[flipped] = t

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in (*self.FIELDS, "first_flip_step")}


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


def failure_evidence(trace: EpisodeTrace, failures: list[dict], window: int = 20) -> list[dict]:
    """For each failed episode: over the ``window`` steps before it failed, the planner's mean
    predicted first-step reward against the reward that came, and the model's mean log-likelihood of
    its own plan and of the observations that followed, next to the same means over every step of
    the episodes that did not fail."""
    failed = {f["episode"] for f in failures}
    healthy = [i for i in range(len(trace.reward)) if i not in failed]

    def means(rows, steps) -> dict:
        pick = (lambda x: x[rows][:, steps]) if steps is not None else (lambda x: x[rows])
        out = {}
        for name in ("predicted_reward", "reward", "plan_log_likelihood", "observed_log_likelihood"):
            values = pick(getattr(trace, name))
            out[name] = float(np.nanmean(values)) if np.isfinite(values).any() else None
        return out

    evidence = []
    for f in failures:
        end = f["step"] if f["step"] is not None else int(np.isfinite(trace.reward[f["episode"]]).sum())
        steps = slice(max(0, end - window), max(1, end))
        evidence.append({"episode": f["episode"], "step": f["step"], "before_failure":
                         means([f["episode"]], steps)})
    reference = means(healthy, None) if healthy else None
    return [{"episodes_that_did_not_fail": reference}, *evidence] if evidence else []


def plot_failures(trace: EpisodeTrace, failures: list[dict], path: str) -> str | None:
    """Predicted vs realised reward and the model's surprise, per failed episode (matplotlib)."""
    if not failures:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = failures[:4]
    fig, axes = plt.subplots(2, len(shown), figsize=(4 * len(shown), 5), squeeze=False)
    for col, f in enumerate(shown):
        i = f["episode"]
        top, bottom = axes[0, col], axes[1, col]
        top.plot(trace.predicted_reward[i], lw=0.6, label="predicted reward (first step)")
        top.plot(trace.reward[i], lw=0.6, label="reward")
        bottom.plot(trace.observed_log_likelihood[i], lw=0.6, label="log p(observation) / token")
        for ax in (top, bottom):
            if f["step"] is not None:
                ax.axvline(f["step"], color="red", lw=0.8)
            ax.set_xlabel("env step")
        top.set_title(f"episode {i}: {f['reason']}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def evaluate(cfg: EvalConfig) -> dict:
    check_planner(cfg.planner)  # before any loading or env work
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
    folder = "eval" if cfg.quantize == "none" else f"eval_{cfg.quantize}"  # precisions side by side
    out = cfg.out or os.path.join(os.path.dirname(checkpoint.path.rstrip("/")), folder)
    os.makedirs(out, exist_ok=True)
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
    trace = result["trace"]
    np.savez_compressed(os.path.join(out, "trace.npz"), **trace.arrays())
    report["failure_plot"] = plot_failures(trace, report["failed_episodes"],
                                           os.path.join(out, "failures.png"))
    report["animation"] = save_animation(result["frames"], os.path.join(out, "episode0.gif"))
    save_json(report, os.path.join(out, "report.json"))
    write_tensorboard(report, os.path.join(out, "tb"))
    summary = report["score"]
    print(f"{cfg.planner}: return {report['return_mean']:.1f} +- {report['return_std']:.1f}  "
          f"{report['score_units']} {format_score(summary)}  failed {len(report['failed_episodes'])} of "
          f"{len(report['returns'])}  ({report['ms_per_env_step']:.0f} ms/env step) -> "
          f"{out}/report.json")
    return report


def software_versions() -> dict:
    """What produced a report: the package and its main libraries, and the git commit if any."""
    import importlib.metadata as metadata
    import subprocess
    versions = {}
    for name in ("trajectory-planning", "torch", "gymnasium", "mujoco", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10)
        versions["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        versions["git_commit"] = None
    return versions


def build_report(cfg: EvalConfig, checkpoint, model, result: dict, wall: float) -> dict:
    returns = result["returns"]
    # without D4RL reference returns there is no normalized score: report returns, scores null
    scores = normalized_score(cfg.env_id, returns) if has_reference_returns(cfg.env_id) else None
    env_steps = int(result["lengths"].max())
    trace = result["trace"]
    failures = failed_episodes(returns, trace.first_flip_step, result["terminal_step"])
    return {
        "checkpoint": checkpoint.path, "core": checkpoint.config.model.core,
        "size": f"{checkpoint.config.model.d_model}x{checkpoint.config.model.n_layers}",
        "planner": cfg.planner, "weights": checkpoint.weights_name(cfg.weights),
        "seeds": [cfg.seed, cfg.seed + cfg.n_episodes - 1],
        "returns": returns.round(2).tolist(), "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "normalized_scores": scores.round(2).tolist() if scores is not None else None,
        "normalized_mean": float(scores.mean()) if scores is not None else None,
        "normalized_std": float(scores.std()) if scores is not None else None,
        "score": summarize(scores if scores is not None else returns, seed=cfg.seed),
        "score_units": "normalized" if scores is not None else "return",
        "failed_episodes": failures,
        "failure_evidence": failure_evidence(trace, failures),
        "warnings": comparability_warnings(cfg.n_episodes, cfg.max_episode_steps),
        "behaviour": behaviour_stats(checkpoint.metrics.get("data", {})),
        "training": {k: checkpoint.metrics.get(k) for k in ("step", "tokens", "loss", "stop_reason")},
        "held_out": checkpoint.metrics.get("held_out"),
        "episode_lengths": result["lengths"].tolist(), "wall_seconds": wall,
        "ms_per_env_step": 1e3 * wall / max(1, env_steps),
        "planning_ms_per_plan": 1e3 * result["planning_seconds"] / max(1, result["plans"]),
        "context_transitions_used": result["context_transitions"],
        "planner_info": result.get("planner_info", {}),  # what a planner adds about itself
        "quantization": model.quantization_info,
        "attention_kernel": describe_attention_kernel(),  # what GPT's planning attention ran on
        "settings": dict(vars(cfg)),
        "versions": software_versions(),
    }


def write_tensorboard(report: dict, folder: str) -> None:
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(folder) as writer:
        for i, ret in enumerate(report["returns"]):
            writer.add_scalar("eval/return", ret, i)
            if report["normalized_scores"] is not None:
                writer.add_scalar("eval/normalized_score", report["normalized_scores"][i], i)
        writer.add_scalar(f"eval/{report['score_units']}_mean", report["score"]["mean"], 0)
        writer.add_scalar("eval/failed_episodes", len(report["failed_episodes"]), 0)
        writer.add_scalar("eval/ms_per_env_step", report["ms_per_env_step"], 0)
