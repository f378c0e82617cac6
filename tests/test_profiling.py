import json
import os
import subprocess
import sys

import pytest

from planners.profiling import GROUPS, group_of_op, profile_planning
from trajectory.config import EvalConfig
from trajectory.configutil import ConfigError
from trajectory.models.trajectory_model import TokenLayout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = TokenLayout(obs_dim=3, act_dim=2, vocab=12, seq_len=6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_planner import save_tiny_run
    return save_tiny_run(tmp_path_factory.mktemp("run"), LAYOUT)


def settings(**overrides) -> EvalConfig:
    base = dict(planner="beam", n_episodes=2, beam_width=4, sample_expand=2, beam_steps=2,
                beam_context=2, profile_steps=2, threads=1)
    return EvalConfig(**{**base, **overrides})


def test_report_files_exist_and_op_groups_add_up(checkpoint, tmp_path):
    out = tmp_path / "profile"
    report = profile_planning(settings(checkpoints_path=str(checkpoint), out=str(out),
                                       compare="gpt,hyena,retnet,s5", quantize="none,dynamic"))
    for name in ("profile.json", "profile.md", "op_groups.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "profile.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert [(r["core"], r["precision"]) for r in report["results"]] == [
        (c, p) for c in ("gpt", "hyena", "retnet", "s5") for p in ("none", "dynamic")]
    weights = {r["core"]: r["weights"] for r in report["results"]}
    assert weights == {"gpt": "random", "hyena": "random", "retnet": "random", "s5": "checkpoint"}
    for r in report["results"]:
        groups = r["groups_ms_per_env_step"]
        assert set(groups) == set(GROUPS)
        assert sum(groups.values()) == pytest.approx(r["profiled_ms_per_env_step"], rel=0.05)
        assert groups["sampling and beam bookkeeping"] > 0 and groups["linear/matmul"] > 0
        assert groups["beam reordering"] > 0  # the state copies of branching and pruning
        assert groups["embedding and heads"] > 0 and r["peak_tensor_mb"] > 0
        assert r["ms_per_env_step"] > 0 and r["flops_per_token"] > 0 and r["bytes"] > 0
        trace = out / f"trace_{r['core']}_{r['precision']}.json"
        assert json.loads(trace.read_text())["traceEvents"]
        assert (out / "tb" / f"{r['core']}_{r['precision']}").is_dir()
    by = {(r["core"], r["precision"]): r["groups_ms_per_env_step"] for r in report["results"]}
    assert by[("hyena", "none")]["FFT"] + by[("hyena", "none")]["convolution"] > 0
    assert by[("s5", "none")]["scan"] > 0 and by[("gpt", "none")]["attention/retention"] > 0
    assert by[("retnet", "none")]["attention/retention"] > 0
    assert by[("s5", "dynamic")]["linear/matmul"] > 0  # int8 linear ops are still linear
    md = (out / "profile.md").read_text()
    assert "| gpt | dynamic | random |" in md and "Top ops: s5 none" in md


def test_op_names_fall_into_the_expected_groups():
    assert group_of_op("aten::addmm") == "linear/matmul"
    assert group_of_op("quantized::linear_dynamic") == "linear/matmul"
    assert group_of_op("aten::quantize_per_tensor") == "int8 quant/dequant"
    assert group_of_op("aten::_fft_r2c") == "FFT"
    assert group_of_op("aten::conv1d") == "convolution"
    assert group_of_op("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention/retention"
    assert group_of_op("aten::layer_norm") == "other"


def test_cli_runs_as_a_subprocess_and_says_when_weights_are_random(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "profile.py"), f"--config={ROOT}/configs/eval_base.yaml",
         "--device=cpu", "n_episodes=1", "beam_width=2", "beam_steps=1", "beam_context=1",
         "profile_steps=1", f"out={tmp_path}", "compare=s5"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random-weight models" in result.stdout
    report = json.loads((tmp_path / "profile.json").read_text())
    assert report["results"][0]["weights"] == "random" and report["results"][0]["parameters"] > 500_000


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="--device=cpu"):
        profile_planning(settings(device="cuda"))


def profile_script():
    """The repository's profile.py (``import profile`` finds the standard library's)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("profile_script", os.path.join(ROOT, "profile.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_is_profiled_with_the_planner_its_recipe_names(tmp_path):
    """The shipped halfcheetah run plans with the critic planner: profile.py times that planner (its
    one-token steps: six action tokens, then the reward), not a beam search."""
    profile_job = profile_script().profile_job
    shipped = os.path.join(ROOT, "pretrained", "halfcheetah-medium-s5-cpu")
    cfg = EvalConfig(checkpoints_path=shipped, n_episodes=2, beam_width=4, beam_context=2, profile_steps=1,
                     threads=1, out=str(tmp_path))
    profile_job(cfg)
    report = json.loads((tmp_path / "profile.json").read_text())
    assert report["settings"]["planner"] == "critic"
    row = report["results"][0]
    assert row["ms_per_env_step"] / row["ms_per_decoded_token"] == pytest.approx(6 + 1)
    assert "the critic planner: 4 candidates" in (tmp_path / "profile.md").read_text()


def test_a_critic_planner_without_a_run_is_refused_before_work(tmp_path):
    profile_job = profile_script().profile_job
    with pytest.raises(ConfigError, match="checkpoints_path=<run>"):
        profile_job(EvalConfig(planner="critic", out=str(tmp_path)))
