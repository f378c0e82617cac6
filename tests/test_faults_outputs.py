"""Fault table of what an evaluation writes: a report folder that cannot be written or lacks room is
refused in one line before any work (before torch loads); a disk that fills while the report is
written keeps the score (printed first) and leaves no half-written file; a one-episode report is
standard JSON; the Agent refuses a non-finite reward and an episode past its length."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from _faults import ROOT, assert_refused, half_written, refused_before_torch, run_cli
from test_end_to_end import write_halfcheetah_hdf5
from test_readme_commands import TINY_PLANNING, TINY_TRAINING

from trajectory.config import EvalConfig
from trajectory.configutil import ConfigError
from trajectory.io import DiskFullError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (two steps): seconds."""
    root = tmp_path_factory.mktemp("runs")
    source = root / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=4, steps=30)
    result = run_cli(["train.py", f"data.source={source}", f"data.cache_dir={root / 'data'}", *TINY_TRAINING,
                      f"runs_dir={root}", "name=tiny"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "tiny"


def eval_args(run, out) -> list[str]:
    return ["eval.py", f"checkpoints_path={run}", "planner=policy", *TINY_PLANNING, f"out={out}"]


def an_existing_file(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("mine")
    return path


# (case, the out= it is given, expected fragment of the one line)
CASES = [
    ("out_is_a_file", an_existing_file, "is a file, not a folder: name another folder with out="),
    ("out_under_proc", lambda tmp_path: "/proc/report", "cannot be written"),
    ("out_under_a_file", lambda tmp_path: an_existing_file(tmp_path) / "eval", "cannot be written"),
]


@pytest.mark.parametrize("case, out, expected", CASES, ids=[c[0] for c in CASES])
def test_an_unwritable_report_folder_is_refused_before_torch(run, tmp_path, case, out, expected):
    target = out(tmp_path)
    code, torch_loaded, stderr = refused_before_torch(eval_args(run, target), cwd=tmp_path)
    assert code == 2 and not torch_loaded, stderr
    assert expected in stderr and f"out={target}" in stderr and "Traceback" not in stderr, stderr
    if case == "out_is_a_file":
        assert target.read_text() == "mine"  # untouched


TRAIN, RUN_NAME = ["train.py", "--config=configs/cpu/halfcheetah_medium_s5.yaml"], "halfcheetah-medium-s5-cpu"
# (case, train.py's settings, expected fragment of the one line)
TRAINING_CASES = [
    ("runs_dir_under_proc", ["runs_dir=/proc/runs"], f"/proc/runs/{RUN_NAME} cannot be written"),
    ("runs_dir_is_a_file", ["runs_dir={file}"], f"{RUN_NAME} cannot be written (Not a directory)"),
    ("cache_dir_under_proc", ["runs_dir={tmp}", "data.cache_dir=/proc/cache"],
     "data.cache_dir=/proc/cache cannot be written"),
]


@pytest.mark.parametrize("case, settings, expected", TRAINING_CASES, ids=[c[0] for c in TRAINING_CASES])
def test_an_unwritable_run_or_cache_folder_is_refused_before_torch(tmp_path, case, settings, expected):
    file = an_existing_file(tmp_path)
    args = [*TRAIN, *(s.format(file=file, tmp=tmp_path) for s in settings)]
    code, torch_loaded, stderr = refused_before_torch(args, cwd=ROOT)
    assert code == 2 and not torch_loaded and expected in stderr and "Traceback" not in stderr, stderr
    assert file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_a_run_folder_without_room_for_its_checkpoints_is_refused_before_training(tmp_path, monkeypatch):
    import trajectory.io as io_module
    from trajectory.cli import parse_cli
    from trajectory.config import TrainRunConfig
    from trajectory.training.trainer import train
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=4, steps=30)
    cfg = parse_cli(TrainRunConfig, [f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}",
                                     *TINY_TRAINING, f"runs_dir={tmp_path}", "name=tiny"])
    real = io_module.shutil.disk_usage

    def little_room_in_runs(path):  # the cache has room, the run folder does not
        usage = real(path)
        return usage if "data" in str(path) else usage._replace(free=1 << 20)

    monkeypatch.setattr(io_module.shutil, "disk_usage", little_room_in_runs)
    with pytest.raises(DiskFullError, match=r"disk holding .*tiny: 1\.0 MB free where .* needs about \d+ MB"):
        train(cfg)
    assert not (tmp_path / "tiny").exists()  # nothing written: the folder the lock made is gone too


def test_an_unwritable_report_folder_is_one_line_from_the_command_line(run, tmp_path):
    result = run_cli(eval_args(run, "/proc/report"), cwd=tmp_path)
    assert_refused(result, "out=/proc/report cannot be written")


def test_a_report_folder_without_room_is_refused_before_the_rollout(run, tmp_path, monkeypatch):
    import planners
    import trajectory.io as io_module
    cfg = EvalConfig(checkpoints_path=str(run), planner="policy", n_episodes=25, max_episode_steps=1000,
                     out=str(tmp_path / "eval"))
    assert planners.report_bytes(cfg) > 25 * 1000 * 6 * 4  # the trace at least
    free = planners.report_bytes(cfg) - 1
    usage = os.statvfs(tmp_path)
    monkeypatch.setattr(io_module.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": free, "total": usage.f_blocks})())
    with pytest.raises(DiskFullError, match=r"no space left on the disk holding .*eval: 4\.\d MB free where"):
        planners.check_eval_output(cfg)
    monkeypatch.undo()
    assert planners.check_eval_output(cfg) == str(tmp_path / "eval")  # room: accepted


def test_a_disk_that_fills_while_the_report_is_written_keeps_the_score(run, tmp_path, monkeypatch, capsys):
    import planners.report as report_module
    import planners.rollout as rollout_module

    def full_after_some_bytes(f, **arrays):
        f.write(b"\0" * 1000)  # a partly written trace
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report_module.np, "savez_compressed", full_after_some_bytes)
    out = tmp_path / "eval"
    cfg = EvalConfig(checkpoints_path=str(run), planner="policy", device="cpu", out=str(out),
                     **{key: int(value) for key, value in (arg.split("=") for arg in TINY_PLANNING)})
    with pytest.raises(DiskFullError, match=f"disk holding {out}: .*the score printed above was not saved"):
        rollout_module.evaluate(cfg)
    printed = capsys.readouterr().out
    assert "policy: return" in printed and " of 2 " in printed  # the score came first
    assert not (out / "trace.npz").exists() and not half_written(out)
    assert not (out / "report.json").exists()


def test_a_one_episode_report_is_standard_json(run, tmp_path):
    out = tmp_path / "eval"
    args = [*eval_args(run, out), "n_episodes=1"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    def refuse(constant):
        raise AssertionError(f"report.json holds a bare {constant}")

    report = json.loads((out / "report.json").read_text(), parse_constant=refuse)
    assert report["return_count"] == 1 if "return_count" in report else len(report["returns"]) == 1
    assert report["score"]["mean"] is not None and report["score"]["sem"] is None  # no spread of one
    trace = np.load(out / "trace.npz")
    assert trace["reward"].shape[0] == 1 and not half_written(out)


def test_the_agent_refuses_a_reward_that_is_not_finite_and_an_episode_past_its_length(run):
    from planners.agent import Agent
    with pytest.raises(ConfigError, match="max_episode_steps must be a number, got '2'"):
        Agent.from_checkpoint(str(run), planner="policy", max_episode_steps="2")
    agent = Agent.from_checkpoint(str(run), planner="policy", max_episode_steps=2)
    obs = np.zeros(17)
    agent.reset()
    agent.act(obs)
    length = agent.history.length
    with pytest.raises(ConfigError, match="not finite"):
        agent.record(float("nan"))
    with pytest.raises(ConfigError, match="one per environment"):
        agent.record([1.0, 2.0])
    assert agent.history.length == length  # nothing recorded
    agent.record(1.0)
    agent.act(obs)
    agent.record(1.0)
    with pytest.raises(ConfigError, match="has reached its 2 steps: reset"):
        agent.act(obs)
    agent.reset()
    agent.act(obs)  # a new episode plans again


def test_an_unwritable_profile_folder_is_refused_before_torch(tmp_path):
    code, torch_loaded, stderr = refused_before_torch(["profile.py", "out=/proc/profile"], cwd=tmp_path)
    assert code == 2 and not torch_loaded and "out=/proc/profile cannot be written" in stderr, stderr
