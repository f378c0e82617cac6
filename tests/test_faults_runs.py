"""Fault table of runs and their critics: a second writer of a run or of a critic, a critic trained
for other data or another discount, damaged critic files, a run stopped before its first checkpoint.
Each ends in one line naming the problem and the fix, exit 2, before any long work, nothing changed
and nothing left half-written. Then what must not be refused: a stale lock, a run with no budget
left, Ctrl-C, overwrite=true, and two real writers of one run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from _faults import ROOT, assert_refused, half_written, refused_before_torch, run_cli
from test_end_to_end import write_halfcheetah_hdf5
from test_readme_commands import TINY_PLANNING, TINY_TRAINING

from trajectory.checkpoint import load_checkpoint
from trajectory.run_lock import LOCK_FILE, folder_lock

ENDLESS = ["train.epochs=100000", "train.max_tokens=1000000000"]  # trains until stopped
CRITIC = ["hidden=16", "batch_size=8", "steps=20", "held_out_every=10", "log_every=5", "save_every=10"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (two steps) with its critic (20 steps): seconds."""
    root = tmp_path_factory.mktemp("runs")
    source = root / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=4, steps=30)
    training = [f"data.source={source}", f"data.cache_dir={root / 'data'}", *TINY_TRAINING,
                "data.holdout_fraction=0.25", f"runs_dir={root}", "name=tiny"]
    for args in (["train.py", *training], ["train_critic.py", f"run={root / 'tiny'}", *CRITIC]):
        result = run_cli(args, cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]
    return root / "tiny", training


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the tiny run for one case to damage."""
    copy = tmp_path / "tiny"
    shutil.copytree(trained[0], copy)
    return copy


def train_args(run) -> list[str]:
    return ["train.py", "--resume", str(run), "train.max_tokens=100000"]


def overwrite_args(run) -> list[str]:
    """Train the copy ``run`` afresh (its config.yaml still names the fixture's folder)."""
    return ["train.py", f"--config={run}/config.yaml", f"runs_dir={run.parent}", f"name={run.name}",
            "overwrite=true"]


def critic_args(run, *extra) -> list[str]:
    return ["train_critic.py", f"run={run}", *CRITIC, *extra]


def eval_args(run, *extra) -> list[str]:
    return ["eval.py", f"--config={ROOT}/configs/eval_base.yaml", f"checkpoints_path={run}", "planner=critic",
            *TINY_PLANNING, "device=cpu", f"out={run}/eval_case", *extra]


def with_provenance(path, **changes) -> None:
    """Rewrite what a critic file (critic.pt or metrics.json) records it was trained on."""
    if str(path).endswith(".json"):
        metrics = json.loads(path.read_text())
        metrics["provenance"].update(changes)
        path.write_text(json.dumps(metrics))
    else:
        saved = torch.load(path, weights_only=True)
        saved["provenance"].update(changes)
        torch.save(saved, path)


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def locked(folder):
    """This test process writes ``folder`` (what a live trainer's lock looks like)."""
    return folder_lock(str(folder), "train.py")


# (case, command line, how the run is damaged or held before it, expected fragment of the one line)
CASES = [
    ("resume_while_training", train_args, lambda run: locked(run), "is being written by train.py"),
    ("overwrite_while_training", overwrite_args, lambda run: locked(run), "is being written by train.py"),
    ("critic_while_training_it", lambda run: critic_args(run, "overwrite=true"),
     lambda run: locked(run / "critic"), "critic is being written by"),
    ("overwrite_while_its_critic_trains", overwrite_args, lambda run: locked(run / "critic"),
     "critic is being written by"),
    ("garbage_critic_pt", eval_args,
     lambda run: (run / "critic" / "critic.pt").write_bytes(os.urandom(200)),
     "critic.pt: the file is truncated, corrupt or not a torch state file"),
    ("truncated_critic_trainer_pt", lambda run: critic_args(run, "steps=40", "resume=true"),
     lambda run: truncate(run / "critic" / "trainer.pt"), "critic/trainer.pt: the file is truncated"),
    ("corrupt_critic_metrics_json", eval_args,
     lambda run: (run / "critic" / "metrics.json").write_text("{"), "critic/metrics.json: it is truncated"),
    ("critic_of_another_discount", eval_args,
     lambda run: with_provenance(run / "critic" / "metrics.json", discount=0.9),
     "was trained for discount=0.9 but the run"),
    ("critic_of_another_dataset_by_its_weights_file", eval_args,
     lambda run: (with_provenance(run / "critic" / "critic.pt", source="walker2d-medium"),
                  (run / "critic" / "metrics.json").unlink()),
     "was trained for source=walker2d-medium but the run"),
    ("critic_resumed_with_other_settings",
     lambda run: critic_args(run, "steps=40", "resume=true", "hidden=8"), lambda run: None,
     "does not fit a critic of hidden=8"),
    ("critic_resumed_on_other_data", lambda run: critic_args(run, "steps=40", "resume=true"),
     lambda run: _resaved_trainer_state(run, data_digest="0" * 16), "started on other data (data_digest"),
    ("resume_stopped_before_first_checkpoint", train_args,
     lambda run: shutil.rmtree(run / "checkpoint"), "was stopped before its first checkpoint"),
]


def _resaved_trainer_state(run, **changes) -> None:
    path = run / "critic" / "trainer.pt"
    state = torch.load(path, weights_only=True)
    state["provenance"].update(changes)
    torch.save(state, path)


@pytest.mark.parametrize("case, command, damage, expected", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_with_nothing_changed(run, case, command, damage, expected):
    held = damage(run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    if hasattr(held, "__enter__"):
        with held:
            result = run_cli(command(run), cwd=run.parent)
    else:
        result = run_cli(command(run), cwd=run.parent)
    assert_refused(result, expected)
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    assert after == before  # nothing removed, rewritten or added
    assert not half_written(run)


def test_a_second_writer_is_refused_before_torch_loads(run):
    with locked(run):
        code, torch_loaded, stderr = refused_before_torch(train_args(run), cwd=run.parent)
    assert code == 2 and not torch_loaded and "is being written by train.py" in stderr


def lines(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip() and "\r" not in line]


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(run):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (run / LOCK_FILE).write_text(json.dumps({"pid": int(dead), "host": "here", "command": "train.py"}))
    result = run_cli([*train_args(run)[:3], "train.max_tokens=2000"], cwd=run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in lines(result) if line.startswith("note:") and LOCK_FILE not in line]
    assert any(f"process {dead} on here" in line and "taking it over" in line for line in notes)
    assert not (run / LOCK_FILE).exists()  # released at the end
    assert load_checkpoint(str(run)).metrics["progress"]["tokens"] >= 2000


def test_resuming_a_run_with_no_budget_left_says_so_and_touches_nothing(run):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    result = run_cli(["train.py", "--resume", str(run)], cwd=run.parent)  # its own max_tokens=1000
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to do (raise train.max_tokens to continue)" in result.stdout
    assert "Traceback" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_the_final_line_reports_the_saved_step(run):
    result = run_cli([*train_args(run)[:3], "train.max_tokens=5000", "train.log_every=1000"], cwd=run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads(lines(result)[-1])
    saved = load_checkpoint(str(run)).metrics
    assert final["step"] == saved["progress"]["step"] == saved["step"] > 2  # not the last logged step
    assert final["tokens"] == saved["progress"]["tokens"]


def test_overwrite_removes_everything_the_old_run_produced(run):
    for folder in ("eval", "eval_critic_1000", "quantized"):
        (run / folder).mkdir()
        (run / folder / "report.json").write_text("{}")
    (run / "notes.txt").write_text("mine")  # not the package's: kept
    result = run_cli(overwrite_args(run), cwd=run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.yaml", "notes.txt", "tb"]
    assert "removed the previous run's" in result.stdout and "critic" in result.stdout


def interrupt_when_training(args: list[str], started, cwd) -> subprocess.CompletedProcess:
    """Run ``args`` until ``started()`` holds, then Ctrl-C (SIGINT) it; its output once it ends."""
    process = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not started() and time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def test_ctrl_c_saves_the_run_and_ends_in_one_line(run):
    checkpoint = run / "checkpoint"
    first = checkpoint.stat().st_ino
    result = interrupt_when_training(
        [os.path.join(ROOT, "train.py"), "--resume", str(run), *ENDLESS, "train.save_every=1",
         "train.log_every=1"], lambda: checkpoint.exists() and checkpoint.stat().st_ino != first, run.parent)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    saved = load_checkpoint(str(run)).metrics
    assert saved["stop_reason"] == "signal"
    assert f"stopped by Ctrl-C at step {saved['progress']['step']:,}: saved in" in result.stdout
    assert f"--resume {run}" in result.stdout and not half_written(run)


def test_ctrl_c_saves_the_critic_and_ends_in_one_line(run):
    shutil.rmtree(run / "critic")  # a fresh critic: its metrics.json appears with its first save
    metrics = run / "critic" / "metrics.json"
    result = interrupt_when_training(
        [os.path.join(ROOT, "train_critic.py"), *critic_args(run, "steps=10000000")[1:],
         "save_every=1"], metrics.exists, run.parent)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    saved = json.loads(metrics.read_text())
    assert saved["stop_reason"] == "signal" and "stopped by Ctrl-C" in result.stdout
    assert "resume=true" in result.stdout and not half_written(run)


def test_two_writers_of_one_run_the_second_refused_the_first_finishes(run):
    """Two real train.py processes on one run: the second is refused while the first trains, the
    first ends (SIGTERM: saves at its next step) and its checkpoint loads."""
    lock, checkpoint = run / LOCK_FILE, run / "checkpoint"
    before = checkpoint.stat().st_ino
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--resume", str(run),
                              *ENDLESS, "train.save_every=1"], cwd=run.parent, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while checkpoint.stat().st_ino == before and time.time() < deadline:  # training: it has saved
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.1)
    assert str(first.pid) in lock.read_text()
    second = run_cli(train_args(run), cwd=run.parent)
    assert_refused(second, f"is being written by train.py (process {first.pid}")
    first.send_signal(signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    final = json.loads(stdout.strip().splitlines()[-1])
    saved = load_checkpoint(str(run), with_trainer_state=True)
    assert saved.trainer_state["progress"]["step"] == final["step"] and final["stop_reason"] == "signal"
    saved.build_model()
    assert not lock.exists() and not half_written(run)
