"""Generation of the reproduction: Minari round trip, timeouts, determinism, atomic writes, CLI."""
import json
import os
import subprocess
import sys

import minari
import numpy as np
import pytest

from trajectory.data import generate

DATASET_ID = "test/cheetah/gen-v0"


def make(root, seed=0, episodes=3, max_steps=50, num_envs=2) -> dict:
    # num_envs=2 < episodes: two lockstep rounds, so appending to the dataset is exercised too
    return generate.generate_dataset(str(root), DATASET_ID, episodes=episodes, max_steps=max_steps,
                                     seed=seed, num_envs=num_envs, progress=False)


def read_back(root, monkeypatch) -> list:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    dataset = minari.load_dataset(DATASET_ID)
    return list(dataset.iterate_episodes())


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_a")
    return root, make(root)


def test_minari_reads_it_back_with_timeouts_on_last_steps(first, monkeypatch):
    root, summary = first
    assert summary["steps"] == 150 and summary["path"] == os.path.join(str(root), DATASET_ID)
    episodes = read_back(root, monkeypatch)
    assert len(episodes) == 3
    for ep in episodes:
        assert ep.observations.shape == (51, 17) and ep.actions.shape == (50, 6)
        assert np.abs(ep.actions).max() <= 1.0
        assert not ep.terminations.any()
        np.testing.assert_array_equal(np.flatnonzero(ep.truncations), [49])
    returns = [float(ep.rewards.sum()) for ep in episodes]
    assert summary["return_mean"] == pytest.approx(np.mean(returns))
    # nothing but the dataset and its namespace metadata is left in the root
    assert sorted(os.listdir(root)) == ["test"]


def test_deterministic_for_a_seed(first, tmp_path, monkeypatch):
    root_a, _ = first
    make(tmp_path / "b")
    make(tmp_path / "c", seed=1)
    a = read_back(root_a, monkeypatch)
    b = read_back(tmp_path / "b", monkeypatch)
    c = read_back(tmp_path / "c", monkeypatch)
    for ea, eb in zip(a, b):
        np.testing.assert_array_equal(ea.observations, eb.observations)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.rewards, eb.rewards)
    assert not np.array_equal(a[0].actions, c[0].actions)
    assert not np.array_equal(a[0].observations[0], a[1].observations[0])  # episodes differ


def test_refuses_to_overwrite(first):
    root, _ = first
    with pytest.raises(FileExistsError, match="already exists"):
        make(root)


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = minari.MinariDataset.update_dataset_from_buffer

    def fail_on_second_round(self, buffer):
        calls["n"] += 1
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(minari.MinariDataset, "update_dataset_from_buffer", fail_on_second_round)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make(tmp_path)  # 3 episodes in rounds of 2: the second round fails
    assert calls["n"] == 1
    assert os.listdir(tmp_path) == []  # no dataset, no temporary folder
    monkeypatch.setattr(minari.MinariDataset, "update_dataset_from_buffer", original)
    make(tmp_path)  # the id is free: a later run succeeds
    assert len(read_back(tmp_path, monkeypatch)) == 3


def test_cli_help_and_tiny_run(tmp_path):
    # run from an empty folder, as a user would (the package is installed in the venv)
    out = subprocess.run([sys.executable, "-m", "trajectory.data.generate", "--help"],
                         capture_output=True, text=True, cwd=tmp_path, check=False)
    assert out.returncode == 0 and "--episodes" in out.stdout and "--num-envs" in out.stdout
    out = subprocess.run([sys.executable, "-m", "trajectory.data.generate", "--episodes", "1",
                          "--max-steps", "5", "--out", str(tmp_path / "m"), "--dataset-id",
                          DATASET_ID], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"] == 5
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_half_written_datasets_of_dead_processes_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    from trajectory.data.generate import OWNER_FILE, remove_stale_generations
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that has ended
    host = socket.gethostname()
    owners = {".generating-dead": f"{host} {dead.pid}", ".generating-alive": f"{host} {os.getpid()}",
              ".generating-elsewhere": f"another-host {dead.pid}"}
    for name, owner in owners.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / OWNER_FILE).write_text(owner)
        (folder / "episode.hdf5").write_bytes(b"x" * 10)
    (tmp_path / ".generating-no-owner").mkdir()  # too recent to judge without an owner
    (tmp_path / "halfcheetah").mkdir()  # a finished dataset is never touched
    removed = remove_stale_generations(str(tmp_path))
    assert [os.path.basename(f) for f in removed] == [".generating-dead"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".generating-alive", ".generating-elsewhere", ".generating-no-owner", "halfcheetah"]
