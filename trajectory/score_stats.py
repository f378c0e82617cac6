"""What a set of evaluation episodes says: the mean normalized score with its standard error and a
bootstrap interval, and which episodes failed.

A halfcheetah episode either runs (about 4,800-5,200 for the behaviour policy) or flips the cheetah
onto its back and ends near zero, so the distribution of returns is bimodal and a handful of
episodes cannot separate two agents: published scores average 25 or more full episodes.
"""
from __future__ import annotations

import math

import numpy as np

COMPARABLE_EPISODES = 25  # what published D4RL scores average over (and our score protocol)
COMPARABLE_STEPS = 1000  # a full MuJoCo locomotion episode


def summarize(scores, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean, standard error of the mean and a 95% percentile-bootstrap interval of ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if n == 0:
        return {"n": 0, "mean": None, "sem": None, "ci95": [None, None]}
    sem = float(scores.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"n": n, "mean": float(scores.mean()), "sem": sem, "ci95": [float(low), float(high)]}


# two-sided 95% quantiles of Student's t with 1..10 degrees of freedom (beyond: the normal's 1.96)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def summarize_runs(runs: list[dict]) -> dict:
    """One score from several independent training runs, each a :func:`summarize` of its episodes.

    The mean is the mean of the runs' means; ``sem`` is its standard error over runs (the spread a
    reader would see training again), with a t interval (few runs); ``sem_episodes`` is what the
    episodes alone contribute (the runs' standard errors combined), for comparison."""
    if len(runs) < 2:
        raise ValueError(f"a score over training runs needs at least 2 runs, got {len(runs)}")
    means = np.array([r["mean"] for r in runs], dtype=np.float64)
    n = len(means)
    sem = float(means.std(ddof=1) / math.sqrt(n))
    t = T95[n - 2] if n - 1 <= len(T95) else 1.96
    mean = float(means.mean())
    return {"n": n, "mean": mean, "sem": sem, "ci95": [mean - t * sem, mean + t * sem],
            "sem_episodes": float(math.sqrt(sum(r["sem"] ** 2 for r in runs)) / n),
            "run_means": means.tolist(), "episodes": int(sum(r["n"] for r in runs))}


def failed_episodes(returns, first_flip_step, terminal_step=None) -> list[dict]:
    """Episodes the environment ended early (``terminal_step[i] >= 0``: Hopper or Walker2d fell, at
    that step), whose torso passed 90 degrees at some step (``first_flip_step[i] >= 0``, the first
    such step) or whose return is below 0, as ``{"episode", "step", "reason", "return"}``."""
    failures = []
    if terminal_step is None:
        terminal_step = np.full(len(returns), -1)
    for i, (ret, step, fell) in enumerate(zip(returns, first_flip_step, terminal_step)):
        if fell >= 0:
            failures.append({"episode": i, "step": int(fell), "reason": "fell (the environment ended "
                             "the episode)", "return": float(ret)})
        elif step >= 0:
            failures.append({"episode": i, "step": int(step), "reason": "torso past 90 degrees",
                             "return": float(ret)})
        elif ret < 0:
            failures.append({"episode": i, "step": None, "reason": "return below 0",
                             "return": float(ret)})
    return failures


def comparability_warnings(n_episodes: int, steps: int) -> list[str]:
    warnings = []
    if n_episodes < COMPARABLE_EPISODES:
        warnings.append(f"{n_episodes} episodes: fewer than {COMPARABLE_EPISODES}, the score is a "
                        f"smoke test, not comparable with published scores")
    if steps < COMPARABLE_STEPS:
        warnings.append(f"episodes of {steps} steps: shorter than {COMPARABLE_STEPS}, not "
                        f"comparable with published scores")
    return warnings


def format_score(summary: dict) -> str:
    """'42.6 +- 0.3 (95% CI 42.0-43.1, n=25)'."""
    if not summary["n"]:
        return "no episodes"
    low, high = summary["ci95"]
    return (f"{summary['mean']:.1f} +- {summary['sem']:.1f} (95% CI {low:.1f}-{high:.1f}, "
            f"n={summary['n']})")
