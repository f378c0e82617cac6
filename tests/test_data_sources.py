"""Sources: D4RL-layout HDF5 files, Minari ids, the local reproduction, and every bad input."""
import dataclasses
import os

import h5py
import numpy as np
import pytest

from trajectory.behaviour import generate
from trajectory.behaviour.reproductions import REPRODUCTIONS
from trajectory.data.sources import (
    DatasetError,
    Transitions,
    check_source,
    load_transitions,
    source_identity,
)

O, A = 5, 2


def d4rl_arrays(lengths=(4, 6, 3), seed=0) -> dict:
    """Episodes back to back; the first ends on a true terminal, the others on timeouts."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    ends = np.cumsum(lengths) - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[ends[0]] = True
    timeouts[ends[1:]] = True
    return {"observations": rng.normal(size=(n, O)), "actions": rng.uniform(-1, 1, (n, A)),
            "rewards": rng.normal(size=n), "terminals": terminals, "timeouts": timeouts,
            "next_observations": rng.normal(size=(n, O))}


def write_hdf5(path, arrays: dict, **attrs) -> str:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.attrs.update(attrs)
    return str(path)


@pytest.fixture(scope="module")
def tiny_minari(tmp_path_factory):
    """3 real HalfCheetah episodes of 50 steps as a Minari dataset under <cache_dir>/minari."""
    cache_dir = tmp_path_factory.mktemp("cache")
    generate.generate_dataset(str(cache_dir / "minari"), "test/cheetah/tiny-v0", episodes=3,
                              max_steps=50, seed=0, num_envs=3, progress=False)
    return str(cache_dir)


def test_hdf5_loads_with_dtypes_and_return_stats(tmp_path):
    arrays = d4rl_arrays()
    tr = load_transitions(write_hdf5(tmp_path / "halfcheetah_medium-v2.hdf5", arrays))
    assert isinstance(tr, Transitions) and len(tr) == 13 and (tr.obs_dim, tr.act_dim) == (O, A)
    assert tr.observations.dtype == np.float32 and tr.actions.dtype == np.float32
    assert tr.rewards.dtype == np.float32 and tr.terminals.dtype == bool and tr.timeouts.dtype == bool
    assert tr.env_id == "HalfCheetah-v5"  # inferred from the file name
    starts, lengths = tr.episode_bounds()
    np.testing.assert_array_equal(starts, [0, 4, 10])
    np.testing.assert_array_equal(lengths, [4, 6, 3])
    expected = [arrays["rewards"][s:s + n].sum() for s, n in zip(starts, lengths)]
    np.testing.assert_allclose(tr.episode_returns, expected, rtol=1e-6)
    stats = tr.return_stats()
    assert stats["return_count"] == 3
    assert stats["normalized_mean"] == pytest.approx(100 * (np.mean(expected) + 280.178953)
                                                      / (12135.0 + 280.178953), rel=1e-5)


def test_hdf5_env_attribute_rewards_column_and_unfinished_tail(tmp_path):
    arrays = d4rl_arrays()
    arrays["rewards"] = arrays["rewards"][:, None]  # [N, 1] as some D4RL files store it
    arrays["timeouts"][-1] = False  # the last episode is unfinished
    tr = load_transitions(write_hdf5(tmp_path / "data.hdf5", arrays, env_id="Hopper-v5"))
    assert tr.env_id == "Hopper-v5" and tr.rewards.shape == (13,)
    assert tr.return_stats()["return_count"] == 2  # the unfinished tail is not a complete episode
    assert len(tr.episode_bounds()[0]) == 3  # but it still is an episode for training


@pytest.mark.parametrize("case, match", [
    ("missing_key", r"missing key\(s\) \['timeouts'\]"),
    ("nan", r"'observations' holds 1 NaN/inf .*transition 2"),
    ("inf", r"'rewards' holds 1 NaN/inf"),
    ("lengths", "different lengths"),
    ("empty", "empty"),
    ("ndim", "'actions' must be 2-D"),
])
def test_hdf5_bad_content(tmp_path, case, match):
    arrays = d4rl_arrays()
    if case == "missing_key":
        del arrays["timeouts"]
    elif case == "nan":
        arrays["observations"][2, 1] = np.nan
    elif case == "inf":
        arrays["rewards"][5] = np.inf
    elif case == "lengths":
        arrays["actions"] = arrays["actions"][:-1]
    elif case == "empty":
        arrays = {k: v[:0] for k, v in arrays.items()}
    elif case == "ndim":
        arrays["actions"] = arrays["actions"][:, 0]
    path = write_hdf5(tmp_path / "bad.hdf5", arrays)
    with pytest.raises(DatasetError, match=match) as err:
        load_transitions(path)
    assert "bad.hdf5" in str(err.value)  # names the file


def test_hdf5_truncated_and_not_hdf5_and_missing(tmp_path):
    path = write_hdf5(tmp_path / "cut.hdf5", d4rl_arrays(lengths=(400, 400)))
    data = (tmp_path / "cut.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[:len(data) // 2])
    with pytest.raises(DatasetError, match="cut.hdf5.*truncated, corrupt or not HDF5"):
        load_transitions(path)
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not an hdf5 file")
    with pytest.raises(DatasetError, match="junk.hdf5"):
        load_transitions(str(junk))
    with pytest.raises(DatasetError, match="not found"):
        load_transitions(str(tmp_path / "nowhere.hdf5"))


def test_unknown_spec_and_missing_minari_id(tmp_path, monkeypatch):
    import minari
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setattr(minari, "load_dataset", lambda *a, **k: pytest.fail("network path taken"))
    with pytest.raises(DatasetError, match="unknown data source 'halfcheetah'.*halfcheetah-medium"):
        load_transitions("halfcheetah", cache_dir=str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_transitions("mujoco/halfcheetah/medium-v0", cache_dir=str(tmp_path))
    message = str(err.value)
    for needle in ("minari download mujoco/halfcheetah/medium-v0", "MINARI_DATASETS_PATH",
                   "data.source=halfcheetah-medium", "data.download=true"):
        assert needle in message
    assert not (tmp_path / "store").exists()  # looking did not create Minari's store


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import minari

    def offline(dataset_id, download=False):
        assert download
        raise ConnectionError("no network")

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setattr(minari, "load_dataset", offline)
    with pytest.raises(DatasetError, match="download of Minari dataset 'mujoco/x/y-v0' failed: no net"):
        load_transitions("mujoco/x/y-v0", download=True, cache_dir=str(tmp_path))


def test_minari_dataset_loads_from_cache_dir_and_store(tiny_minari, monkeypatch, tmp_path):
    tr = load_transitions("test/cheetah/tiny-v0", cache_dir=tiny_minari)
    assert len(tr) == 150 and (tr.obs_dim, tr.act_dim) == (17, 6)
    assert tr.env_id == "HalfCheetah-v5" and tr.source == "Minari dataset 'test/cheetah/tiny-v0'"
    assert not tr.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(tr.timeouts), [49, 99, 149])
    assert tr.return_stats()["return_count"] == 3
    # the same id found through MINARI_DATASETS_PATH, from another cache_dir
    monkeypatch.setenv("MINARI_DATASETS_PATH", os.path.join(tiny_minari, "minari"))
    again = load_transitions("test/cheetah/tiny-v0", cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.observations, tr.observations)


def test_corrupt_minari_dataset(tiny_minari, tmp_path):
    import shutil
    root = tmp_path / "minari"
    shutil.copytree(os.path.join(tiny_minari, "minari"), root)
    data_file = root / "test/cheetah/tiny-v0/data/main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="corrupt or incomplete"):
        load_transitions("test/cheetah/tiny-v0", cache_dir=str(tmp_path))


def test_reproduction_generated_on_first_use_then_reused(tmp_path, monkeypatch):
    small = dataclasses.replace(REPRODUCTIONS["halfcheetah-medium"], steps=40, max_steps=20)
    monkeypatch.setitem(REPRODUCTIONS, "halfcheetah-medium", small)
    assert source_identity("halfcheetah-medium", str(tmp_path)) is None
    tr = load_transitions("halfcheetah-medium", cache_dir=str(tmp_path))
    assert len(tr) == 40 and tr.source == "halfcheetah-medium" and tr.env_id == "HalfCheetah-v5"
    assert len(tr.episode_returns) == 2  # two whole episodes of the 20-step limit
    assert (tmp_path / "minari" / small.dataset_id / "data" / "metadata.json").is_file()
    identity = source_identity("halfcheetah-medium", str(tmp_path))
    assert identity is not None

    def no_generation(*args, **kwargs):
        raise AssertionError("generated twice")

    monkeypatch.setattr(generate, "generate_dataset", no_generation)
    again = load_transitions("halfcheetah-medium", cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.actions, tr.actions)
    assert source_identity("halfcheetah-medium", str(tmp_path)) == identity


def test_reproduction_without_its_policy_and_missing_d4rl_ids_name_the_fix(tmp_path, monkeypatch):
    gone = dataclasses.replace(REPRODUCTIONS["hopper-medium"], policy=str(tmp_path / "no.pt"))
    monkeypatch.setitem(REPRODUCTIONS, "hopper-medium", gone)
    for check in (load_transitions, check_source):  # the early check finds what loading would
        with pytest.raises(DatasetError, match="behaviour policy .*no.pt is missing"):
            check("hopper-medium", cache_dir=str(tmp_path))
    assert not (tmp_path / "minari" / gone.dataset_id).exists()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    with pytest.raises(DatasetError, match="mujoco/walker2d/medium-v0.*data.source=walker2d-medium"):
        load_transitions("mujoco/walker2d/medium-v0", cache_dir=str(tmp_path))
