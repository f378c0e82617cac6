"""benchmarks/scores.py: rows pooled from several reports, and what search adds."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "benchmarks"))  # last: nothing there may shadow anything
import scores  # noqa: E402


def test_importing_the_script_leaves_the_stdlib_profile_module_importable():
    import importlib
    profile = importlib.import_module("profile")
    assert hasattr(profile, "runctx") and sys.path[0] != ROOT


def write_report(folder, seed, scores_, planner="beam", checkpoint="runs/x/checkpoint", failed=(),
                 env_id="HalfCheetah-v5", lengths=None, max_episode_steps=1000, policy_actions="greedy",
                 quantize="none"):
    os.makedirs(folder, exist_ok=True)
    settings = {"seed": seed, "n_episodes": len(scores_), "planner": planner,
                "policy_actions": policy_actions, "beam_width": 32, "beam_steps": 5, "sample_expand": 2,
                "beam_context": 5, "cdf_act": 0.6, "k_act": None, "max_episode_steps": max_episode_steps,
                "device": "cpu", "out": str(folder), "threads": 1, "env_id": env_id}
    report = {"checkpoint": checkpoint, "core": "s5", "size": "64x2", "settings": settings,
              "returns": [s * 100 for s in scores_], "normalized_scores": list(scores_),
              "episode_lengths": list(lengths or [max_episode_steps] * len(scores_)),
              "ms_per_env_step": 10.0,
              "failed_episodes": [{"episode": i, "step": 5, "reason": "torso past 90 degrees",
                                   "return": 0.0} for i in failed],
              "training": {"tokens": 1000}, "held_out": None, "quantization": {"mode": quantize}}
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump(report, f)


def test_a_row_pools_parts_and_counts_failures_by_seed(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.normal(40, 2, size=5) for _ in range(5)]
    for k, part in enumerate(parts):
        write_report(tmp_path / "beam" / f"part{k}", 100 + 5 * k, part, failed=(1,) if k == 2 else ())
    row = scores.make_row(str(tmp_path / "beam"), "30 min", "2 CPU cores", None)
    pooled = np.concatenate(parts)
    assert row["episodes"] == 25 and row["seeds"] == [100, 124] and row["protocol"]
    assert row["score"]["mean"] == pytest.approx(pooled.mean())
    assert row["failed"] == 1 and row["failed_episodes"][0]["seed"] == 111
    # overlapping seeds or another checkpoint cannot be pooled
    write_report(tmp_path / "bad" / "part0", 100, parts[0])
    write_report(tmp_path / "bad" / "part1", 102, parts[1])
    with pytest.raises(SystemExit, match="overlap"):
        scores.make_row(str(tmp_path / "bad"), "t", "h", None)
    write_report(tmp_path / "mixed" / "part0", 100, parts[0])
    write_report(tmp_path / "mixed" / "part1", 105, parts[1], checkpoint="runs/y/checkpoint")
    with pytest.raises(SystemExit, match="checkpoint"):
        scores.make_row(str(tmp_path / "mixed"), "t", "h", None)


def test_a_row_records_how_deep_its_planner_searched(tmp_path):
    for planner, depth in (("policy", 0), ("critic", 1), ("beam", 5)):
        write_report(tmp_path / planner, 1000, [40.0] * 25, planner=planner)
        row = scores.make_row(str(tmp_path / planner), "30 min", "2 CPU cores", None)
        assert row["search_depth"] == depth


def test_an_int8_planner_is_a_row_of_its_own_beside_the_same_planner_in_fp32(tmp_path):
    made = {}
    for mode in ("none", "dynamic"):
        write_report(tmp_path / mode, 1000, [40.0] * 25, planner="critic", quantize=mode)
        made[mode] = scores.make_row(str(tmp_path / mode), "30 min", "2 CPU cores", None)
    assert made["none"]["id"] != made["dynamic"]["id"]
    assert made["dynamic"]["actions"] == made["none"]["actions"] + ", int8 dynamic"
    assert made["dynamic"]["planner_settings"]["quantize"] == "dynamic"
    assert "quantize" not in made["none"]["planner_settings"]  # fp32 rows as they always were


def test_what_search_adds_pairs_a_planner_with_its_policy(tmp_path):
    write_report(tmp_path / "beam", 100, [44.0] * 25)
    write_report(tmp_path / "policy", 100, [42.0] * 25, planner="policy")
    write_report(tmp_path / "other_seeds", 1000, [30.0] * 25)
    rows = [scores.make_row(str(tmp_path / name), "30 min", "cpu", None)
            for name in ("beam", "policy", "other_seeds")]
    text = scores.gains(rows)
    assert "**+2.0**" in text and text.count("| s5 |") == 1  # the 1000 row has no policy to pair
    assert text.splitlines()[2].endswith("| **+2.0** ± 0.0 | n/a | 0 / 0 of 25 |")  # no median policy
    assert "n/a" in scores.table(rows)  # no held-out metrics recorded
    # a median policy of the same checkpoint and seeds gets its own column, not the greedy one's
    write_report(tmp_path / "median", 100, [45.0] * 25, planner="policy", policy_actions="median")
    rows.append(scores.make_row(str(tmp_path / "median"), "30 min", "cpu", None))
    line = scores.gains(rows).splitlines()[2]
    assert line.endswith("| **+2.0** ± 0.0 | **-1.0** ± 0.0 | 0 / 0 / 0 of 25 |")


def test_the_cli_rebuilds_from_a_rows_file(tmp_path):
    write_report(tmp_path / "policy", 100, [42.0] * 25, planner="policy")
    rows = tmp_path / "rows.tsv"
    rows.write_text(f"# comment\n{tmp_path / 'policy'}\t30 min\t2 CPU cores\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- scores:begin -->\nold\n<!-- scores:end -->\nafter\n")
    env = {**os.environ, "SCORES_OUT": str(tmp_path / "scores.json")}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scores.py"), "rebuild",
                             "--rows", str(rows), "--readme", str(readme)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert "**42.0**" in text and "old" not in text and text.endswith("after\n")
    assert json.loads((tmp_path / "scores.json").read_text())["rows"][0]["episodes"] == 25


def test_falls_are_full_episodes_but_a_short_time_limit_is_not(tmp_path):
    lengths = [1000] * 20 + [312, 87, 640, 999, 15]  # five hoppers fell
    write_report(tmp_path / "hopper", 100, [50.0] * 25, env_id="Hopper-v5", lengths=lengths)
    row = scores.make_row(str(tmp_path / "hopper"), "20 min", "2 CPU cores", None)
    assert row["protocol"] and row["env"] == "hopper"
    write_report(tmp_path / "short", 100, [50.0] * 25, env_id="Hopper-v5", max_episode_steps=100)
    assert not scores.make_row(str(tmp_path / "short"), "t", "h", None)["protocol"]
    assert "| hopper-medium | s5 |" in scores.table([row])


def test_rows_name_each_planner_by_its_settings():
    beam = {"planner": "beam", "beam_width": 16, "beam_steps": 5, "sample_expand": 2, "cdf_act": 0.6}
    assert scores.action_choice(beam) == "beam 16x2, 5 steps"
    assert scores.action_choice({**beam, "cdf_act": 0.85}) == "beam 16x2, 5 steps, cdf_act 0.85"
    assert scores.action_choice({"planner": "policy", "policy_actions": "median"}) == "policy, median"
    critic = {**beam, "planner": "critic", "beam_width": 32}
    assert scores.action_choice(critic, {"critic": "c.pt", "expectile": 0.7, "step": 131891}) == (
        "critic (IQL expectile 0.7, 131k steps), best of 32 policy actions")
    assert scores.action_choice(critic) == "critic, best of 32 policy actions"
    deep = {**beam, "plan_value": "critic", "beam_steps": 3}
    assert scores.action_choice(deep, {"expectile": 0.7, "step": 20000}) == (
        "beam 16x2, 3 steps, valued by the critic (IQL expectile 0.7, 20k steps)")


def test_runs_of_one_recipe_combine_into_one_row_and_rebuild_keeps_it(tmp_path):
    means = (50.0, 52.0, 57.0)
    folders = []
    for seed, mean in enumerate(means, start=1):
        folder = tmp_path / f"x-seed{seed}_critic"
        write_report(folder, 1000, list(mean + np.linspace(-1, 1, 25)), planner="critic",
                     checkpoint=f"runs/x-seed{seed}/checkpoint", failed=(3,) if seed == 2 else ())
        folders.append(str(folder))
    per_run = [scores.make_row(f, "20 min", "2 CPU cores", None) for f in folders]
    row = scores.combine_rows(per_run)
    assert row["checkpoint"] == "runs/x-seed{1,2,3}/checkpoint" and row["training_seeds"] == 3
    assert row["score"]["mean"] == pytest.approx(np.mean(means))
    assert row["score"]["sem"] == pytest.approx(np.std(means, ddof=1) / np.sqrt(3))
    assert row["episodes"] == 75 and row["failed"] == 1 and row["failed_episodes"][0]["run"] == 1
    assert row["protocol"] and row["seeds"] == [1000, 1024] and "mean of 3 training runs" in row["training"]
    # one run twice, or runs acting differently, are not independent runs of one recipe
    with pytest.raises(SystemExit, match="twice"):
        scores.combine_rows([per_run[0], per_run[0]])
    write_report(tmp_path / "policy", 1000, [40.0] * 25, planner="policy",
                 checkpoint="runs/x-seed4/checkpoint")
    policy = scores.make_row(str(tmp_path / "policy"), "20 min", "2 CPU cores", None)
    with pytest.raises(SystemExit, match="differ in actions"):
        scores.combine_rows([per_run[0], policy])

    # score_rows.tsv lists the runs joined by ';': a rebuild makes the same combined row
    tsv = tmp_path / "rows.tsv"
    tsv.write_text(f"{folders[0]}\t20 min\t2 CPU cores\n{';'.join(folders)}\t20 min\t2 CPU cores\n")
    env = {**os.environ, "SCORES_OUT": str(tmp_path / "scores.json")}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scores.py"), "rebuild",
                             "--rows", str(tsv)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    rebuilt = json.loads((tmp_path / "scores.json").read_text())["rows"]
    assert [r.get("training_seeds", 1) for r in rebuilt] == [1, 3]
    assert rebuilt[1]["score"]["mean"] == pytest.approx(row["score"]["mean"])
