"""benchmarks/headline.py: which rows the README's headline table picks, and the chart beside it."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "benchmarks"))  # last: nothing there may shadow anything
import headline  # noqa: E402


def row(env, planner, mean, run="a", seeds=(1000, 1024), weights="raw", policy_actions="median",
        tokens=100_000_000, core="s5", **settings):
    actions = f"policy, {policy_actions}" if planner == "policy" else f"{planner} 32"
    actions += f" ({weights} weights)"
    return {"id": f"runs/{run}/checkpoint|{actions}|{seeds[0]}-{seeds[1]}",
            "checkpoint": f"runs/{run}/checkpoint", "env": env, "core": core, "tokens": tokens,
            "actions": actions, "protocol": True, "seeds": list(seeds), "episodes": 25,
            "planner_settings": {"planner": planner, "policy_actions": policy_actions, "weights": "ema",
                                 **settings},
            "score": {"mean": mean, "sem": 0.5}}


def test_the_headline_takes_the_newest_current_critic_row_and_the_same_runs_median_policy(tmp_path):
    rows = [
        row("halfcheetah", "critic", 52.0, run="b"),  # an older row of the same recipe
        row("halfcheetah", "critic", 50.0),  # the newest of the default core: the headline
        row("halfcheetah", "critic", 58.0, run="g", core="gpt"),  # another core: not the headline
        row("halfcheetah", "beam", 55.0),  # a critic row exists: beam search is not the headline
        row("halfcheetah", "critic", 60.0, weights="ema"),  # averaged weights: removed since
        row("halfcheetah", "critic", 61.0, seeds=(100, 124)),  # tuning seeds
        row("halfcheetah", "critic", 62.0, quantize="static"),  # int8: a row beside the fp32 one
        row("halfcheetah", "policy", 40.0, policy_actions="greedy"),
        row("halfcheetah", "policy", 44.0),
        row("halfcheetah", "policy", 30.0, run="b"),
        row("halfcheetah", "policy", 45.0, tokens=200_000_000),  # the same folder, trained on: another run
        row("hopper", "beam", 30.0, run="h"),
        row("hopper", "beam", 35.0, run="h", anchor_median=True),  # a setting removed since
        row("hopper", "policy", 20.0, run="h", policy_actions="greedy"),
    ]
    scores, reproductions = tmp_path / "scores.json", tmp_path / "reproductions.json"
    scores.write_text(json.dumps({"rows": rows}))
    reproductions.write_text(json.dumps({"halfcheetah-medium": {"normalized_mean": 41.46},
                                         "hopper-medium": {"normalized_mean": 51.6}}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline:begin -->\nold\n<!-- headline:end -->\nafter\n")
    png = tmp_path / "results" / "headline.png"
    png.parent.mkdir()
    headline.main(["--scores", str(scores), "--reproductions", str(reproductions), "--png", str(png),
                   "--readme", str(readme)])

    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("after\n")
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if "-medium |" in line}
    cheetah, hopper, walker = lines["halfcheetah-medium"], lines["hopper-medium"], lines["walker2d-medium"]
    assert "**50.0** ± 0.5 | 44.0 ± 0.5 (median) | 41.5 | 46.9 | 47.4 | 1 |" in cheetah
    assert cheetah.split(" | ")[1].startswith("critic 32; s5, 100M tokens")
    assert "**30.0** ± 0.5 | 20.0 ± 0.5 (greedy) | 51.6 | 61.1 | 66.3 | 1 |" in hopper
    assert "none measured | n/a | n/a | n/a | 79.0 | 78.3 | - |" in walker
    assert "![headline](results/headline.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_averaging_several_training_runs_outranks_a_newer_single_run(tmp_path):
    combined = {**row("halfcheetah", "critic", 51.0, run="x-seed{1,2,3}"), "training_seeds": 3}
    combined_policy = {**row("halfcheetah", "policy", 43.0, run="x-seed{1,2,3}"), "training_seeds": 3}
    rows = [combined, combined_policy,
            row("halfcheetah", "critic", 55.0, run="later"),  # newer, but one run
            row("halfcheetah", "policy", 44.0, run="later")]
    best, policy = headline.pick(rows, "halfcheetah")
    assert best is combined and policy is combined_policy
    line = [x for x in headline.table(rows, {}).splitlines() if x.startswith("| halfcheetah")][0]
    assert "**51.0** ± 0.5 | 43.0 ± 0.5 (median)" in line and line.rstrip(" |").endswith("3")
