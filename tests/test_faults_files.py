"""Fault table of the files the package reads back and the checkpoints it writes: each damaged file
(a run's checkpoint files, the token cache, the HDF5 and Minari sources) under the command that reads
it ends in one line naming the file and the fix, exit 2, or, for the token cache, a rebuild; a save
that finds the disk full says so in one line and keeps the previous checkpoint. Nothing is left
half-written."""
from __future__ import annotations

import errno
import json
import os
import runpy
import shutil
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from _faults import ROOT, assert_refused, half_written, run_cli
from test_end_to_end import write_halfcheetah_hdf5
from test_readme_commands import TINY_PLANNING, TINY_TRAINING

from trajectory.behaviour import generate
from trajectory.checkpoint import load_checkpoint, save_checkpoint
from trajectory.checkpoint_folder import write_checkpoint_folder
from trajectory.data.dataset import load_tokens
from trajectory.data.sources import DatasetError, load_transitions
from trajectory.io import DiskFullError, atomic_write, save_json
from trajectory.loaders import UnreadableFileError, load_json, load_npz, load_torch_state, load_yaml

UNWEIGHTED = "train.advantage_beta=0"  # the recipe weights by a critic; these runs need none

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A HalfCheetah HDF5 file, its token cache and a run trained on it for two steps (seconds)."""
    root = tmp_path_factory.mktemp("tiny")
    source = root / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=3, steps=30)
    result = run_cli(["train.py", f"--config={ROOT}/configs/cpu/halfcheetah_medium_s5.yaml",
                      f"data.source={source}", f"data.cache_dir={root / 'data'}", *TINY_TRAINING, UNWEIGHTED,
                      f"runs_dir={root / 'runs'}", "name=base"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture
def run(tiny, tmp_path):
    """A copy of the tiny run to damage."""
    shutil.copytree(tiny / "runs" / "base", tmp_path / "run")
    return tmp_path / "run"


def truncate(path, keep: int = 300) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def not_a_trainer_state(path) -> None:
    import torch
    torch.save({"step": 1}, path)


EVAL = ["eval.py", "checkpoints_path={run}", "planner=beam", *TINY_PLANNING, "out={tmp}/eval"]
RESUME = ["train.py", "--resume", "{run}", "train.max_tokens=3000"]
CRITIC = ["train_critic.py", "run={run}", "steps=2", "hidden=16", "batch_size=8"]

# (file in the checkpoint folder, how it is damaged, command, the expected fragment of its one line)
CHECKPOINT_FAULTS = [
    ("metrics.json", lambda p: p.write_text("{"), EVAL, "metrics.json: it is truncated or not JSON"),
    ("metrics.json", lambda p: p.write_text("{"), RESUME, "metrics.json: it is truncated or not JSON"),
    ("metrics.json", lambda p: p.write_text("{"), CRITIC, "metrics.json: it is truncated or not JSON"),
    ("metrics.json", lambda p: p.write_text("[1, 2]"), EVAL, "holds a list, not the JSON object"),
    ("discretizer.npz", lambda p: p.write_text("garbage\n"), EVAL, "discretizer.npz: the file is truncated, "
                                                                   "corrupt or not an .npz archive"),
    ("discretizer.npz", truncate, EVAL, "discretizer.npz: the file is truncated"),
    ("trainer.pt", truncate, RESUME, "trainer.pt: the file is truncated, corrupt or not a torch state"),
    ("trainer.pt", not_a_trainer_state, RESUME, "trainer.pt: it lacks 'optimizer', 'progress', 'rng'"),
    ("model.pt", truncate, EVAL, "model.pt: the file is truncated, corrupt"),
    ("model.pt", truncate, RESUME, "model.pt: the file is truncated, corrupt"),
    ("config.yaml", lambda p: p.write_text("{"), RESUME, "config.yaml: it is truncated or not YAML"),
    ("config.yaml", lambda p: p.write_text("{"), EVAL, "config.yaml: it is truncated or not YAML"),
]
RETRAIN = "train the run again"
FIX = {"metrics.json": "delete it", "discretizer.npz": RETRAIN, "model.pt": RETRAIN,
       "trainer.pt": "train a new run", "config.yaml": RETRAIN}


@pytest.mark.parametrize("name, damage, command, expected", CHECKPOINT_FAULTS,
                         ids=[f"{c[0]}-{c[2][0]}-{i}" for i, c in enumerate(CHECKPOINT_FAULTS)])
def test_a_damaged_checkpoint_file_is_one_line_naming_it_and_the_fix(run, tmp_path, name, damage, command,
                                                                      expected):
    damage(run / "checkpoint" / name)
    before = sorted(os.listdir(run / "checkpoint"))
    result = run_cli([a.format(run=run, tmp=tmp_path) for a in command], cwd=tmp_path)
    assert_refused(result, expected, max_lines=1)
    assert FIX[name] in result.stderr
    assert sorted(os.listdir(run / "checkpoint")) == before  # refused before anything was written
    assert half_written(tmp_path) == []


def rewrite_hdf5(source, path, change) -> None:
    with h5py.File(source) as src:
        arrays = {key: src[key][()] for key in src}
    change(arrays)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value


def with_nan(arrays) -> None:
    arrays["observations"][5, 2] = np.nan


# (how the source is made from the good one, the expected fragment)
SOURCE_FAULTS = [
    (lambda good, bad: bad.write_bytes(good.read_bytes()[:2000]), "truncated, corrupt or not HDF5"),
    (lambda good, bad: bad.write_text("garbage\n"), "truncated, corrupt or not HDF5"),
    (lambda good, bad: rewrite_hdf5(good, bad, lambda a: a.pop("timeouts")), "missing key(s) ['timeouts']"),
    (lambda good, bad: rewrite_hdf5(good, bad, with_nan), "'observations' holds 1 NaN/inf value(s)"),
    (lambda good, bad: rewrite_hdf5(good, bad, lambda a: a.update(actions=a["actions"][:5])),
     "arrays have different lengths"),
    (lambda good, bad: rewrite_hdf5(good, bad, lambda a: a.update(rewards=a["rewards"][:, None, None])),
     "'rewards' must be 1-D"),
]


@pytest.mark.parametrize("make, expected", SOURCE_FAULTS,
                         ids=["truncated", "garbage", "missing-key", "nan", "lengths", "shape"])
def test_a_damaged_hdf5_source_is_one_line_naming_the_file(tiny, tmp_path, make, expected):
    bad = tmp_path / "halfcheetah_bad.hdf5"
    make(tiny / "halfcheetah_tiny.hdf5", bad)
    result = run_cli(["train.py", f"--config={ROOT}/configs/cpu/halfcheetah_medium_s5.yaml",
                      f"data.source={bad}", f"data.cache_dir={tmp_path / 'data'}", *TINY_TRAINING, UNWEIGHTED,
                      f"runs_dir={tmp_path / 'runs'}", "name=x"], cwd=tmp_path)
    assert_refused(result, expected, max_lines=1)
    assert str(bad) in result.stderr
    assert not os.path.exists(tmp_path / "runs" / "x" / "checkpoint") and half_written(tmp_path) == []


@pytest.mark.parametrize("damage", [truncate, lambda p: p.write_text("garbage\n")],
                         ids=["truncated", "garbage"])
def test_a_damaged_token_cache_is_rebuilt_with_one_line_saying_so(tiny, tmp_path, damage):
    shutil.copytree(tiny / "data", tmp_path / "data")
    (cache,) = (tmp_path / "data" / "tokens").iterdir()
    good = load_tokens(str(cache))
    damage(cache)
    result = run_cli(["train.py", f"--config={ROOT}/configs/cpu/halfcheetah_medium_s5.yaml",
                      f"data.source={tiny / 'halfcheetah_tiny.hdf5'}", f"data.cache_dir={tmp_path / 'data'}",
                      *TINY_TRAINING, UNWEIGHTED, f"runs_dir={tmp_path / 'runs'}", "name=x"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    notes = [line for line in result.stdout.splitlines() if str(cache) in line]
    assert len(notes) == 1 and "truncated, corrupt or not an .npz archive" in notes[0], result.stdout
    assert "rebuilding it from the dataset" in notes[0]
    rebuilt = load_tokens(str(cache))
    np.testing.assert_array_equal(rebuilt.tokens, good.tokens)
    assert half_written(tmp_path) == []


@pytest.fixture(scope="module")
def tiny_minari(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("minari_cache")
    generate.generate_dataset(str(cache_dir / "minari"), "test/cheetah/tiny-v0", episodes=2,
                              max_steps=20, seed=0, num_envs=2, progress=False)
    return cache_dir


def narrow_second_episode(data) -> None:
    with h5py.File(data / "main_data.hdf5", "a") as f:
        observations = f["episode_1/observations"][()]
        del f["episode_1/observations"]
        f["episode_1/observations"] = observations[:, :5]


def drop_episode_actions(data) -> None:
    with h5py.File(data / "main_data.hdf5", "a") as f:
        del f["episode_1/actions"]


MINARI_FAULTS = [
    (lambda data: (data / "metadata.json").write_text("{"), "corrupt or incomplete: delete the folder"),
    (lambda data: (data / "main_data.hdf5").write_text("garbage\n"),
     "corrupt or incomplete: delete the folder"),
    (drop_episode_actions, "corrupt or incomplete: delete the folder"),
    (narrow_second_episode, "the episodes' 'observations' differ in shape"),
]


@pytest.mark.parametrize("damage, expected", MINARI_FAULTS,
                         ids=["metadata", "garbage", "no-actions", "widths"])
def test_a_damaged_minari_dataset_is_one_error_naming_it_and_the_fix(tiny_minari, tmp_path, damage, expected):
    shutil.copytree(tiny_minari / "minari", tmp_path / "minari")
    damage(tmp_path / "minari" / "test" / "cheetah" / "tiny-v0" / "data")
    with pytest.raises(DatasetError, match="Minari dataset 'test/cheetah/tiny-v0'") as err:
        load_transitions("test/cheetah/tiny-v0", cache_dir=str(tmp_path))
    message = str(err.value)
    assert expected in message and "\n" not in message and "Minari dataset Minari" not in message


# ---------------------------------------------------------------------- the loaders themselves
def test_each_loader_names_the_file_the_problem_and_the_given_fix(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00garbage")
    missing = str(tmp_path / "missing")
    for load in (load_json, load_yaml, load_torch_state, load_npz):
        for path, problem in ((str(bad), "cannot read"), (missing, "the file is missing")):
            with pytest.raises(UnreadableFileError) as err:
                load(path, "retrain it")
            assert str(err.value).startswith(f"cannot read {path}: ") and problem in str(err.value)
            assert str(err.value).endswith("; retrain it") and "\n" not in str(err.value)
    (tmp_path / "m.json").write_text(json.dumps({"step": 3}))
    assert load_json(str(tmp_path / "m.json"), "x", keys=("step",)) == {"step": 3}
    with pytest.raises(UnreadableFileError, match="lacks 'loss'"):
        load_json(str(tmp_path / "m.json"), "x", keys=("step", "loss"))
    np.savez(tmp_path / "a.npz", edges=np.ones(3))
    arrays = load_npz(str(tmp_path / "a.npz"), "x", keys=("edges",))
    np.testing.assert_array_equal(arrays["edges"], np.ones(3))
    np.savez(tmp_path / "o.npz", edges=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnreadableFileError, match="o.npz: the file is truncated, corrupt or not an .npz"):
        load_npz(str(tmp_path / "o.npz"), "x")  # pickled objects are refused, not loaded


# ---------------------------------------------------------------------- a full disk
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def assert_previous_checkpoint_kept(run, step: int) -> None:
    assert load_checkpoint(str(run), with_trainer_state=True).trainer_state["progress"]["step"] == step
    assert sorted(os.listdir(run / "checkpoint")) == ["COMPLETE", "config.yaml", "discretizer.npz",
                                                      "metrics.json", "model.pt", "trainer.pt"]
    assert half_written(run) == []


def test_a_save_on_a_full_disk_names_it_and_keeps_the_previous_checkpoint(run, monkeypatch):
    import trajectory.checkpoint as checkpoint_module
    saved = load_checkpoint(str(run), with_trainer_state=True)
    step = saved.trainer_state["progress"]["step"]
    real_save = checkpoint_module.torch.save

    def full_at_trainer_state(obj, f, *args, **kwargs):
        if str(getattr(f, "name", f)).endswith("trainer.pt"):
            no_space()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_at_trainer_state)
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(str(run / "checkpoint"), saved.config, saved.build_model(), saved.discretizer,
                        saved.trainer_state, {})
    assert str(err.value) == (f"no space left on the disk holding {run}: the checkpoint was not saved (the "
                              f"previous one, {run / 'checkpoint'}, is kept); free some space there, then "
                              f"resume the run again")
    assert_previous_checkpoint_kept(run, step)


def test_an_atomic_write_on_a_full_disk_names_it_and_keeps_the_earlier_version(tmp_path):
    path = tmp_path / "report.json"
    save_json({"version": 1}, str(path))
    with pytest.raises(DiskFullError) as err:
        atomic_write(str(path), no_space, mode="w")
    assert str(err.value) == (f"no space left on the disk holding {tmp_path}: report.json was not saved (the "
                              f"earlier version is kept); free some space there (or write elsewhere) and run "
                              f"again")
    assert json.loads(path.read_text()) == {"version": 1} and half_written(tmp_path) == []


def test_torch_writing_by_name_on_a_nearly_full_disk_counts_as_full(tmp_path, monkeypatch):
    """torch.save(obj, <name>) reports a full disk only as a failed write (a RuntimeError): a failed
    save is a full disk when its disk has (almost) nothing left, and an ordinary failure otherwise."""
    import trajectory.io

    def failed_write(folder):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    checkpoint = tmp_path / "checkpoint"
    for free, raised in ((0, DiskFullError), (10 << 30, RuntimeError)):
        monkeypatch.setattr(trajectory.io.shutil, "disk_usage",
                            lambda path, free=free: SimpleNamespace(free=free))
        with pytest.raises(raised, match="none was saved before" if free == 0 else "unexpected pos"):
            write_checkpoint_folder(str(checkpoint), failed_write)
        assert os.listdir(tmp_path) == []


def test_train_py_on_a_full_disk_exits_2_with_one_line(run, monkeypatch, capsys):
    """The whole command in this process, the disk filling up when the new checkpoint is flushed."""
    import trajectory.checkpoint_folder as checkpoint_folder
    step = load_checkpoint(str(run), with_trainer_state=True).trainer_state["progress"]["step"]
    main = runpy.run_path(os.path.join(ROOT, "train.py"), run_name="train")["main"]
    monkeypatch.setattr(checkpoint_folder, "fsync", no_space)
    assert main(["--resume", str(run), "train.max_tokens=3000"]) == 2
    stderr = capsys.readouterr().err
    errors = [line.split("error: ", 1)[1] for line in stderr.split("\r") if "error: " in line]
    assert errors == [f"no space left on the disk holding {run}: the checkpoint was not saved (the "
                      f"previous one, {run / 'checkpoint'}, is kept); free some space there, then resume "
                      f"the run again\n"], stderr
    assert_previous_checkpoint_kept(run, step)


def can_mount_a_small_disk() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not can_mount_a_small_disk(),
                    reason="needs unshare and a tmpfs mount in a user namespace")
def test_train_py_on_a_really_full_disk(run, tmp_path):
    """A run on a small tmpfs (in a private mount namespace) with room for less than one more
    checkpoint: resuming it is refused before training, by the room check of the run folder (a
    save that fills the disk midway is the in-process case above), and the checkpoint is kept."""
    checkpoint_bytes = sum(f.stat().st_size for f in (run / "checkpoint").iterdir())
    disk, after = tmp_path / "disk", tmp_path / "after"
    disk.mkdir()
    script = f"""
set -e
mount -t tmpfs -o size=64m tmpfs {disk}
cp -r {run} {disk}/run
used=$(df -B1 --output=used {disk} | tail -1)
mount -o remount,size=$((used + {checkpoint_bytes} / 2)) {disk}
set +e
OMP_NUM_THREADS=1 {sys.executable} {ROOT}/train.py \\
    --resume {disk}/run train.max_tokens=3000 >{tmp_path}/stdout 2>{tmp_path}/stderr
echo $? >{tmp_path}/rc
cp -r {disk}/run {after}
"""
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=300)
    result = subprocess.CompletedProcess([], int((tmp_path / "rc").read_text()),
                                         (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text())
    assert_refused(result, f"no space left on the disk holding {disk}/run: 0.", max_lines=1)
    assert "MB free where what will be written needs about" in result.stderr
    step = load_checkpoint(str(run), with_trainer_state=True).trainer_state["progress"]["step"]
    assert_previous_checkpoint_kept(after, step)
