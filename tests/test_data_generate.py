"""Generation of the reproduction: Minari round trip, timeouts, determinism, atomic writes, CLI."""
import json
import os
import subprocess
import sys

import minari
import numpy as np
import pytest

from trajectory.behaviour import generate
from trajectory.behaviour.reproductions import REPRODUCTIONS

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
    out = subprocess.run([sys.executable, "-m", "trajectory.behaviour.generate", "--help"],
                         capture_output=True, text=True, cwd=tmp_path, check=False)
    assert out.returncode == 0 and "--episodes" in out.stdout and "--num-envs" in out.stdout
    out = subprocess.run([sys.executable, "-m", "trajectory.behaviour.generate", "--episodes", "1",
                          "--max-steps", "5", "--out", str(tmp_path / "m"), "--dataset-id",
                          DATASET_ID], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"] == 5
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_half_written_datasets_of_dead_processes_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    from trajectory.behaviour.generate import OWNER_FILE, remove_stale_generations
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


@pytest.fixture(scope="module")
def hopper_policy(tmp_path_factory):
    """A small untrained Hopper policy: its hopper falls within tens of steps (a true terminal)."""
    import torch

    from trajectory.behaviour.policy import SquashedGaussianActor, save_policy
    torch.manual_seed(0)
    actor = SquashedGaussianActor(1, 11, 3, 16)
    path = str(tmp_path_factory.mktemp("policy") / "hopper.pt")
    save_policy(path, actor.state_dict(), 11, 3, 16, {"env_id": "Hopper-v5"})
    return path


def make_hopper(root, policy, steps, num_envs=3) -> dict:
    return generate.generate_dataset(str(root), "test/hopper/gen-v0", steps=steps, max_steps=1000,
                                     seed=0, num_envs=num_envs, policy_path=policy,
                                     env_id="Hopper-v5", progress=False)


def test_step_budget_with_terminals_writes_exactly_the_budget(hopper_policy, tmp_path, monkeypatch):
    summary = make_hopper(tmp_path / "a", hopper_policy, steps=300)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "a"))
    episodes = list(minari.load_dataset("test/hopper/gen-v0").iterate_episodes())
    lengths = [len(ep.rewards) for ep in episodes]
    assert sum(lengths) == summary["steps"] == 300 and summary["episodes"] == len(episodes) > 3
    for ep in episodes[:-1]:  # every whole episode ended by falling, at its last step only
        np.testing.assert_array_equal(np.flatnonzero(ep.terminations), [len(ep.rewards) - 1])
        assert not ep.truncations.any() and len(ep.rewards) < 1000
    last = episodes[-1]  # cut by the budget: a truncation, not a terminal
    assert last.truncations[-1] and not last.terminations.any()
    assert summary["terminated_episodes"] == len(episodes) - 1
    whole = [float(ep.rewards.sum()) for ep in episodes[:-1]]  # the cut episode is not a return
    assert summary["return_mean"] == pytest.approx(np.mean(whole))
    assert [ep.id for ep in episodes] == list(range(len(episodes)))


def test_a_smaller_budget_keeps_a_prefix_of_the_same_episodes(hopper_policy, tmp_path, monkeypatch):
    make_hopper(tmp_path / "big", hopper_policy, steps=300)
    make_hopper(tmp_path / "small", hopper_policy, steps=120)
    read = {}
    for name in ("big", "small"):
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / name))
        read[name] = list(minari.load_dataset("test/hopper/gen-v0").iterate_episodes())
    small, big = read["small"], read["big"]
    assert sum(len(ep.rewards) for ep in small) == 120
    for a, b in zip(small[:-1], big):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
    cut = small[-1]  # the cut episode is the start of the same episode in the bigger dataset
    np.testing.assert_array_equal(cut.actions, big[len(small) - 1].actions[:len(cut.actions)])


def test_policy_of_another_environment_is_refused(tmp_path):
    with pytest.raises(ValueError, match="17 observation dimensions, Hopper-v5 has 11"):
        generate.generate_dataset(str(tmp_path), "test/hopper/gen-v0", steps=10, env_id="Hopper-v5",
                                  progress=False)
    assert not (tmp_path / "test").exists()


def test_every_reproduction_names_an_environment_policy_and_a_million_steps():
    from trajectory.envs import env_family
    assert sorted(REPRODUCTIONS) == ["halfcheetah-medium", "hopper-medium", "walker2d-medium"]
    for name, repro in REPRODUCTIONS.items():
        assert name == f"{env_family(repro.env_id)}-medium" and repro.steps == 1_000_000
        assert repro.dataset_id == f"trajectory/{env_family(repro.env_id)}/medium-v0"


def test_generated_terminals_reach_rows_and_windows(hopper_policy, tmp_path):
    """On generated Hopper data the penalty lands on the falls only, value-to-go restarts at every
    episode, and padded windows never mix two episodes."""
    from trajectory.data.dataset import WindowDataset, joined_rows
    from trajectory.data.sources import load_minari_path

    make_hopper(tmp_path, hopper_policy, steps=200)
    tr = load_minari_path(str(tmp_path / "test/hopper/gen-v0"), "generated hopper")
    assert tr.env_id.startswith("Hopper") and tr.terminals.sum() >= 3 and tr.timeouts.sum() == 1
    plain, penalised = joined_rows(tr, 0.99, 0.0), joined_rows(tr, 0.99, -100.0)
    np.testing.assert_allclose(penalised[:, -2] - plain[:, -2], -100.0 * tr.terminals)
    starts, lengths = tr.episode_bounds()
    ends = starts + lengths - 1
    np.testing.assert_array_equal(penalised[ends, -1], 0.0)  # nothing follows an episode's end
    before_fall = ends[tr.terminals[ends]] - 1  # the step before a fall sees the penalty coming
    np.testing.assert_allclose(penalised[before_fall, -1], plain[before_fall + 1, -2] - 100.0)
    tokens = np.arange(1, len(tr) + 1, dtype=np.int64)[:, None].repeat(3, 1)  # token = step index
    windows = WindowDataset(tokens, lengths, seq_len=4)
    assert len(windows) == len(tr)
    episode = np.repeat(np.arange(len(lengths)), lengths)
    for i in range(len(windows)):
        real = windows[i]["x"][windows[i]["x"] > 0]  # padding is token 0
        assert len(set(episode[real.numpy() - 1].tolist())) == 1
