"""Rows, value-to-go, windows (padded and packed), the token cache and build_dataset."""
import os

import h5py
import numpy as np
import pytest
import torch

from trajectory.config import DataConfig
from trajectory.data import dataset as ds_module
from trajectory.data.dataset import (
    WindowDataset,
    build_dataset,
    joined_rows,
    value_to_go,
)
from trajectory.data.sources import Transitions

O, A = 3, 2
D = O + A + 2


def transitions(lengths=(5, 1, 8, 3), terminal_episodes=(0, 2), seed=0) -> Transitions:
    """Episodes back to back; ``terminal_episodes`` end on a true terminal, the rest on timeouts."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    ends = np.cumsum(lengths) - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    for e, end in enumerate(ends):
        (terminals if e in terminal_episodes else timeouts)[end] = True
    return Transitions(rng.normal(size=(n, O)).astype(np.float32),
                       rng.uniform(-1, 1, (n, A)).astype(np.float32),
                       rng.normal(size=n).astype(np.float32), terminals, timeouts,
                       env_id="HalfCheetah-v5", source="hand-built")


def slow_values(rewards, terminals, timeouts, gamma):
    """Reference: V_t = sum_k gamma^k r_{t+1+k} within the episode, one step at a time."""
    values = np.zeros(len(rewards))
    for t in range(len(rewards)):
        total, k = 0.0, 0
        u = t
        while not (terminals[u] or timeouts[u]) and u + 1 < len(rewards):
            u += 1
            total += gamma ** k * rewards[u]
            k += 1
        values[t] = total
    return values


def test_value_to_go_hand_computed():
    rewards = np.array([1.0, 2.0, 3.0, 10.0, 20.0])  # episodes [1, 2, 3] and [10, 20]
    values = value_to_go(rewards, np.array([0, 3]), np.array([3, 2]), 0.5)
    np.testing.assert_allclose(values, [2 + 0.5 * 3, 3, 0, 20, 0])


@pytest.mark.parametrize("gamma", [0.99, 0.5])
def test_value_to_go_matches_slow_loop_across_episodes(gamma):
    tr = transitions(lengths=(7, 1, 30, 2, 12))
    rows = joined_rows(tr, gamma, terminal_penalty=0.0)
    expected = slow_values(tr.rewards.astype(np.float64), tr.terminals, tr.timeouts, gamma)
    np.testing.assert_allclose(rows[:, -1], expected, rtol=1e-12, atol=1e-12)
    # values never leak across episodes: the last step of each episode is 0
    starts, lengths = tr.episode_bounds()
    np.testing.assert_array_equal(rows[starts + lengths - 1, -1], 0.0)


def test_terminal_penalty_only_on_true_terminals():
    tr = transitions()
    plain = joined_rows(tr, 0.99, 0.0)
    penalised = joined_rows(tr, 0.99, -100.0)
    diff = penalised[:, -2] - plain[:, -2]  # the reward column
    np.testing.assert_allclose(diff, -100.0 * tr.terminals)
    assert tr.timeouts.any() and (diff[tr.timeouts] == 0).all()
    penalised_rewards = tr.rewards.astype(np.float64) - 100.0 * tr.terminals
    expected = slow_values(penalised_rewards, tr.terminals, tr.timeouts, 0.99)
    np.testing.assert_allclose(penalised[:, -1], expected, rtol=1e-12)
    np.testing.assert_array_equal(penalised[:, :O + A], np.hstack([tr.observations, tr.actions]))


def tokens_for(tr: Transitions):
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 100, size=(len(tr), D)).astype(np.uint8)  # no 0: padding shows
    return tokens, tr.episode_bounds()[1]


def test_padded_windows_every_start_mask_and_content():
    tr = transitions()
    tokens, lengths = tokens_for(tr)
    seq_len = 4
    ds = WindowDataset(tokens, lengths, seq_len)
    assert len(ds) == len(tr) == lengths.sum()  # one window per start index of every episode
    starts = np.cumsum(lengths) - lengths
    i = 0
    for start, length in zip(starts, lengths):
        for t in range(length):
            item = ds[i]
            real = min(seq_len, length - t)
            window = np.zeros((seq_len, D), np.int64)
            window[:real] = tokens[start + t:start + t + real]
            flat_mask = np.repeat(np.arange(seq_len) < real, D)
            assert item["x"].dtype == torch.int64 and item["x"].shape == (seq_len * D - 1,)
            np.testing.assert_array_equal(item["x"], window.reshape(-1)[:-1])
            np.testing.assert_array_equal(item["y"], window.reshape(-1)[1:])
            np.testing.assert_array_equal(item["mask"], flat_mask[1:].astype(np.float32))
            assert "resets" not in item
            i += 1
    batch = ds[[0, 5, 6]]
    assert batch["x"].shape == (3, seq_len * D - 1)
    np.testing.assert_array_equal(batch["y"][1], ds[5]["y"])


def test_packed_windows_resets_and_boundary_mask():
    tr = transitions(lengths=(5, 1, 8, 3))
    tokens, lengths = tokens_for(tr)
    seq_len = 4
    ds = WindowDataset(tokens, lengths, seq_len, packed=True)
    n = len(tr)
    assert len(ds) == n - seq_len + 1
    episode_start = np.zeros(n, bool)
    episode_start[np.cumsum(lengths) - lengths] = True
    for s in range(len(ds)):
        item = ds[s]
        np.testing.assert_array_equal(item["x"], tokens[s:s + seq_len].reshape(-1)[:-1])
        resets = np.zeros((seq_len, D), bool)
        resets[:, 0] = episode_start[s:s + seq_len]
        np.testing.assert_array_equal(item["resets"], resets.reshape(-1)[:-1])
        mask = ~resets
        mask[0, 0] = True  # the window's first token is never a target anyway
        np.testing.assert_array_equal(item["mask"], mask.reshape(-1)[1:].astype(np.float32))
    # window 4 starts at the last step of episode 0 and crosses into episodes 1 and 2
    assert ds[4]["resets"].view(seq_len * D - 1)[[D, 2 * D]].all()


def test_dataloader_with_batch_sampler():
    tokens, lengths = tokens_for(transitions())
    ds = WindowDataset(tokens, lengths, 3)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds), 4, drop_last=True)
    batches = list(torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None))
    assert len(batches) == len(ds) // 4 and batches[0]["x"].shape == (4, 3 * D - 1)


def write_source(path, seed=0):
    tr = transitions(seed=seed)
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            f.create_dataset(key, data=getattr(tr, key))
    return str(path)


def test_build_dataset_info_and_cache(tmp_path, monkeypatch):
    source = write_source(tmp_path / "halfcheetah_toy.hdf5")
    cfg = DataConfig(source=source, cache_dir=str(tmp_path / "cache"), seq_len=3, n_bins=16)
    dataset, disc, info = build_dataset(cfg)
    assert (info["obs_dim"], info["act_dim"], info["transition_dim"]) == (O, A, D)
    assert info["env_id"] == "HalfCheetah-v5" and info["n_windows"] == len(dataset) == 17
    assert info["return_count"] == 4 and not info["cache_hit"] and os.path.isfile(info["cache_path"])
    assert disc.dim == D and disc.n_bins == 16
    # a hit returns identical arrays without reading the source again
    monkeypatch.setattr(ds_module, "load_transitions", lambda *a, **k: pytest.fail("not cached"))
    dataset2, disc2, info2 = build_dataset(cfg)
    assert info2["cache_hit"] and info2["cache_path"] == info["cache_path"]
    np.testing.assert_array_equal(dataset2.stream, dataset.stream)
    np.testing.assert_array_equal(disc2.edges, disc.edges)
    assert {k: v for k, v in info2.items() if k not in ("cache_hit", "build_seconds")} == \
           {k: v for k, v in info.items() if k not in ("cache_hit", "build_seconds")}
    monkeypatch.undo()
    # any setting that changes the tokens misses; the window length does not matter
    for change in ({"n_bins": 8}, {"strategy": "uniform"}, {"discount": 0.9},
                   {"terminal_penalty": -1.0}):
        _, _, other = build_dataset(DataConfig(**{**cfg.__dict__, **change}))
        assert not other["cache_hit"] and other["cache_path"] != info["cache_path"]
    assert build_dataset(DataConfig(**{**cfg.__dict__, "seq_len": 5}))[2]["cache_hit"]
    # so does a change of the source file
    os.utime(source, ns=(1, 1))
    assert not build_dataset(cfg)[2]["cache_hit"]


def test_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    source = write_source(tmp_path / "toy.hdf5")
    cfg = DataConfig(source=source, cache_dir=str(tmp_path / "cache"), seq_len=3, n_bins=16)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(cfg)
    assert os.listdir(tmp_path / "cache" / "tokens") == []
    monkeypatch.undo()
    assert not build_dataset(cfg)[2]["cache_hit"]


def test_packed_build_on_real_minari_data(tmp_path):
    from trajectory.behaviour import generate
    generate.generate_dataset(str(tmp_path / "minari"), "test/cheetah/win-v0", episodes=2,
                              max_steps=30, seed=0, num_envs=2, progress=False)
    cfg = DataConfig(source="test/cheetah/win-v0", cache_dir=str(tmp_path), seq_len=10, packed=True)
    dataset, disc, info = build_dataset(cfg)
    assert info["transition_dim"] == 25 and info["n_windows"] == 60 - 10 + 1
    item = dataset[25]  # crosses from episode 0 into episode 1 at transition 30
    assert item["resets"].reshape(-1)[(30 - 25) * 25] and item["resets"].sum() == 1
    # the stream decodes back to the joined rows, within half a bin
    from trajectory.data.sources import load_transitions
    rows = joined_rows(load_transitions(cfg.source, cache_dir=cfg.cache_dir), 0.99, -100.0)
    tokens = dataset.stream
    half_width = 0.5 * disc.widths[np.arange(25), tokens]
    assert (np.abs(disc.decode(tokens) - rows) <= half_width + 1e-6).all()


def test_held_out_episodes_are_whole_and_never_trained_on(tmp_path):
    from trajectory.data.dataset import build_datasets, held_out_episodes
    lengths = tuple(int(n) for n in np.random.default_rng(3).integers(4, 12, size=50))
    tr = transitions(lengths=lengths, terminal_episodes=())
    path = tmp_path / "halfcheetah_toy.hdf5"
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            f.create_dataset(key, data=getattr(tr, key))
    cfg = DataConfig(source=str(path), cache_dir=str(tmp_path / "cache"), seq_len=3, n_bins=16,
                     holdout_fraction=0.1)
    built = build_datasets(cfg)
    held = np.asarray(built.info["held_out_episodes"])
    assert len(held) == 5 and held.tolist() == held_out_episodes(50, 0.1).tolist()
    starts = np.cumsum(lengths) - np.array(lengths)
    held_rows = np.concatenate([np.arange(starts[e], starts[e] + lengths[e]) for e in held])
    train_rows = np.setdiff1d(np.arange(sum(lengths)), held_rows)
    # windows: as many as steps in each split, and every training window's tokens come from
    # training episodes only (compare observations row by row)
    assert len(built.train) == len(train_rows) and len(built.held_out) == len(held_rows)
    tokens = built.discretizer.encode(joined_rows(tr, cfg.discount, cfg.terminal_penalty))
    valid_train = built.train.stream[built.train.valid]
    np.testing.assert_array_equal(valid_train, tokens[train_rows])
    np.testing.assert_array_equal(built.held_out.stream[built.held_out.valid], tokens[held_rows])
    # the discretizer was fitted without the held-out rows
    rows = joined_rows(tr, cfg.discount, cfg.terminal_penalty)
    from trajectory.data.discretizer import Discretizer
    expected = Discretizer(16, "quantile").fit(rows[train_rows])
    np.testing.assert_array_equal(built.discretizer.edges, expected.edges)
    # no fraction, nothing held out; a tiny dataset holds out nothing either
    none = build_datasets(DataConfig(**{**cfg.__dict__, "holdout_fraction": 0.0}))
    assert none.held_out is None and len(none.train) == sum(lengths)
    assert held_out_episodes(4, 0.02).size == 0


def test_timeouts_bootstrap_the_value_and_terminals_do_not():
    tr = transitions(lengths=(4, 3), terminal_episodes=(0,))  # ep 0 terminal, ep 1 time-limited
    gamma = 0.9
    plain = joined_rows(tr, gamma, terminal_penalty=0.0)[:, -1]
    boot = joined_rows(tr, gamma, terminal_penalty=0.0, bootstrap_timeouts=True)[:, -1]
    np.testing.assert_allclose(boot[:4], plain[:4])  # a true terminal ends the value at 0
    tail = tr.rewards[4:7].astype(np.float64).mean() / (1 - gamma)
    assert boot[6] == pytest.approx(tail) and plain[6] == 0.0
    r = tr.rewards.astype(np.float64)
    assert boot[5] == pytest.approx(r[6] + gamma * tail)
    assert boot[4] == pytest.approx(r[5] + gamma * r[6] + gamma ** 2 * tail)
