"""What an evaluation leaves behind: the per-step trace of what the planner predicted and what
happened, and the report built from it.

``<out>/report.json`` (returns, normalized scores, the dataset's behaviour return for comparison,
failed episodes with the evidence before each failure, timing, settings, software versions),
``<out>/trace.npz``, tensorboard scalars in ``<out>/tb``, a plot of the failed episodes and, with
``render=true``, an animation of the first episode.
"""
from __future__ import annotations

import os

import numpy as np

from trajectory.config import EvalConfig
from trajectory.cpu_features import read_cpu_features
from trajectory.envs import has_reference_returns, normalized_score, torso_flipped
from trajectory.io import atomic_open, atomic_write, finite_or_null, save_json
from trajectory.models.ops.decode_attention import describe as describe_attention_kernel
from trajectory.score_stats import comparability_warnings, failed_episodes, format_score, summarize


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


def save_animation(frames: list, path: str) -> str | None:
    if not frames:
        return None
    from PIL import Image
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    with atomic_open(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
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
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=90)
    finally:
        plt.close(fig)
    return path


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


def advantage_beta(checkpoint) -> float:
    """How strongly the model's action tokens were weighted by a critic's advantages (0: not)."""
    train = getattr(getattr(checkpoint, "config", None), "train", None)
    return float(getattr(train, "advantage_beta", 0.0))


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
        "planner": cfg.planner,
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
        "training": {**{k: checkpoint.metrics.get(k) for k in ("step", "tokens", "loss", "stop_reason")},
                     "advantage_beta": advantage_beta(checkpoint)},
        "held_out": checkpoint.metrics.get("held_out"),
        "episode_lengths": result["lengths"].tolist(), "wall_seconds": wall,
        "ms_per_env_step": 1e3 * wall / max(1, env_steps),
        "planning_ms_per_plan": 1e3 * result["planning_seconds"] / max(1, result["plans"]),
        "context_transitions_used": result["context_transitions"],
        "planner_info": result.get("planner_info", {}),  # what a planner adds about itself
        "quantization": model.quantization_info,
        "cpu": read_cpu_features().describe(),  # int8 speed depends on the CPU's instructions
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


def write_report(report: dict, result: dict, out: str) -> None:
    """The report and what goes beside it into folder ``out``; adds the paths of the failure plot
    and the animation (None when there is none) to ``report``."""
    trace = result["trace"]
    atomic_write(os.path.join(out, "trace.npz"), lambda f: np.savez_compressed(f, **trace.arrays()))
    report["failure_plot"] = plot_failures(trace, report["failed_episodes"],
                                           os.path.join(out, "failures.png"))
    report["animation"] = save_animation(result["frames"], os.path.join(out, "episode0.gif"))
    save_json(finite_or_null(report), os.path.join(out, "report.json"))  # n=1: a null spread, not NaN
    write_tensorboard(report, os.path.join(out, "tb"))


def summary_line(report: dict, out: str) -> str:
    """One line for the terminal: return, score with its interval, failures, speed, where it went."""
    return (f"{report['planner']}: return {report['return_mean']:.1f} +- {report['return_std']:.1f}  "
            f"{report['score_units']} {format_score(report['score'])}  failed "
            f"{len(report['failed_episodes'])} of {len(report['returns'])}  "
            f"({report['ms_per_env_step']:.0f} ms/env step) -> {out}/report.json")
