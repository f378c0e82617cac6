"""Score summaries and failure detection on synthetic returns and observations."""
import math

import numpy as np
import pytest

from planners.report import EpisodeTrace, failure_evidence
from trajectory.score_stats import (
    comparability_warnings,
    failed_episodes,
    format_score,
    summarize,
    summarize_runs,
)


def test_summary_mean_sem_and_bootstrap_interval():
    rng = np.random.default_rng(0)
    scores = rng.normal(40.0, 5.0, size=25)
    s = summarize(scores, seed=1)
    assert s["n"] == 25 and s["mean"] == pytest.approx(scores.mean())
    assert s["sem"] == pytest.approx(scores.std(ddof=1) / 5.0)
    low, high = s["ci95"]
    assert low < s["mean"] < high
    # a percentile bootstrap of a mean is about +-1.96 standard errors wide
    assert (high - low) / (2 * 1.96 * s["sem"]) == pytest.approx(1.0, abs=0.15)
    # more episodes, narrower interval
    wide = summarize(rng.normal(40.0, 5.0, size=5), seed=1)
    assert wide["ci95"][1] - wide["ci95"][0] > high - low
    assert "n=25" in format_score(s)


def test_bimodal_returns_give_a_wide_interval():
    # 21 episodes that run and 4 that flip: the interval must not hide the flips
    scores = np.array([42.0] * 21 + [1.0] * 4)
    s = summarize(scores, seed=0)
    assert s["ci95"][0] < 40.0 < s["ci95"][1] and s["sem"] > 2.0
    constant = summarize(np.full(25, 42.0))
    assert constant["sem"] == 0.0 and constant["ci95"] == [42.0, 42.0]
    assert math.isnan(summarize([3.0])["sem"])


def test_failures_from_torso_angle_and_negative_returns():
    trace = EpisodeTrace(envs=4, steps=10)
    rows = np.arange(4)
    for t in range(10):
        angles = np.array([0.1, 0.2 + 0.2 * t, -0.3, 0.0])  # env 1 passes pi/2 at t = 7 (1.6)
        angles[2] = -2.0 if t >= 3 else -0.3  # env 2 flips backwards at t = 3, and stays
        trace.record_step(rows, t, np.ones(4), angles)
    assert trace.first_flip_step.tolist() == [-1, 7, 3, -1]
    returns = np.array([5.0, 2.0, 1.0, -3.0])
    failures = failed_episodes(returns, trace.first_flip_step)
    assert [(f["episode"], f["step"], f["reason"]) for f in failures] == [
        (1, 7, "torso past 90 degrees"), (2, 3, "torso past 90 degrees"), (3, None, "return below 0")]
    evidence = failure_evidence(trace, failures)
    assert len(evidence) == 1 + len(failures)
    assert evidence[0]["episodes_that_did_not_fail"]["reward"] == pytest.approx(1.0)
    assert failed_episodes(np.array([1.0, 2.0]), np.array([-1, -1])) == []


def test_finished_envs_are_not_recorded():
    trace = EpisodeTrace(envs=3, steps=4)
    trace.record_step(np.array([0, 2]), 0, np.array([1.0, 2.0]), np.array([2.0, 0.0]))
    assert np.isnan(trace.reward[1, 0]) and trace.reward[2, 0] == 2.0
    assert trace.first_flip_step.tolist() == [0, -1, -1]


def test_warnings_for_short_evaluations():
    assert comparability_warnings(25, 1000) == []
    assert len(comparability_warnings(5, 1000)) == 1 and "smoke test" in comparability_warnings(5, 1000)[0]
    assert len(comparability_warnings(25, 200)) == 1


def test_a_report_without_reference_returns_keeps_the_returns():
    from types import SimpleNamespace

    from planners.report import build_report
    from trajectory.config import EvalConfig, ModelConfig
    cfg = EvalConfig(env_id="InvertedPendulum-v5", n_episodes=3, max_episode_steps=4, seed=7)
    trace = EpisodeTrace(envs=3, steps=4)
    result = {"returns": np.array([4.0, 3.0, 5.0]), "lengths": np.array([4, 4, 4]),
              "terminal_step": np.array([-1, -1, -1]), "planning_seconds": 0.1, "plans": 4,
              "context_transitions": 1, "trace": trace}
    checkpoint = SimpleNamespace(path="runs/x", config=SimpleNamespace(model=ModelConfig()),
                                 metrics={}, weights_name=lambda w: "raw")
    report = build_report(cfg, checkpoint, SimpleNamespace(quantization_info={}), result, 1.0)
    assert report["normalized_scores"] is None and report["score_units"] == "return"
    assert report["score"]["mean"] == pytest.approx(4.0) and report["returns"] == [4.0, 3.0, 5.0]



def test_a_score_over_training_runs_is_the_mean_of_their_means_with_the_spread_between_runs():
    runs = [summarize(np.full(25, m) + np.linspace(-1, 1, 25)) for m in (50.0, 52.0, 57.0)]
    combined = summarize_runs(runs)
    assert combined["mean"] == pytest.approx(53.0) and combined["n"] == 3 and combined["episodes"] == 75
    spread = np.std([50.0, 52.0, 57.0], ddof=1) / math.sqrt(3)
    assert combined["sem"] == pytest.approx(spread)
    # with 3 runs the interval is Student's t (2 degrees of freedom), far wider than the normal's
    low, high = combined["ci95"]
    assert high - 53.0 == pytest.approx(4.303 * spread) and 53.0 - low == pytest.approx(4.303 * spread)
    # the episodes' own noise is small here: the runs' spread is what a reader would see again
    assert combined["sem_episodes"] == pytest.approx(runs[0]["sem"] / math.sqrt(3))
    assert combined["sem_episodes"] < combined["sem"]
    with pytest.raises(ValueError, match="at least 2"):
        summarize_runs(runs[:1])
