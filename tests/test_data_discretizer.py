"""Discretizer: round-trip error, degenerate dimensions, expectation, atomic persistence."""
import os

import numpy as np
import pytest
import torch

from trajectory.data import discretizer as disc_module
from trajectory.data.discretizer import Discretizer


def sample_rows(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(size=n), rng.exponential(3.0, size=n), rng.uniform(-5, 5, size=n),
                     rng.standard_t(2, size=n)], axis=1)  # [N, 4], skewed and heavy-tailed


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_round_trip_error_within_bin_width(strategy):
    rows = sample_rows()
    disc = Discretizer(n_bins=100, strategy=strategy).fit(rows)
    tokens = disc.encode(rows)
    assert tokens.dtype == np.uint8 and tokens.shape == rows.shape
    assert tokens.min() >= 0 and tokens.max() < 100
    error = np.abs(disc.decode(tokens) - rows)
    width = disc.widths[np.arange(rows.shape[1]), tokens]  # width of each value's own bin
    assert (error <= 0.5 * width + 1e-9).all()
    # and every value lies inside its bin
    edges = disc.edges
    cols = np.arange(rows.shape[1])
    assert (edges[cols, tokens] <= rows + 1e-12).all()
    assert (rows <= edges[cols, tokens + 1] + 1e-12).all()


def test_quantile_bins_hold_similar_counts():
    rows = sample_rows(10_000)
    tokens = Discretizer(n_bins=20, strategy="quantile").fit(rows).encode(rows)
    counts = np.stack([np.bincount(tokens[:, d], minlength=20) for d in range(rows.shape[1])])
    assert counts.min() >= 400 and counts.max() <= 600  # 500 expected per bin


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_constant_and_discrete_dimensions_decode_exactly(strategy):
    rng = np.random.default_rng(1)
    rows = np.stack([np.full(500, 3.25), rng.integers(0, 2, 500).astype(float),
                     rng.normal(size=500)], axis=1)
    disc = Discretizer(n_bins=10, strategy=strategy).fit(rows)
    decoded = disc.decode(disc.encode(rows))
    np.testing.assert_array_equal(decoded[:, 0], 3.25)
    if strategy == "quantile":  # repeated edges: values on them sit in zero-width bins
        np.testing.assert_array_equal(decoded[:, 1], rows[:, 1])
    assert np.isfinite(decoded).all()


def test_out_of_range_values_clip_to_end_bins():
    disc = Discretizer(n_bins=10, strategy="uniform").fit(np.linspace(0, 1, 11)[:, None])
    np.testing.assert_array_equal(disc.encode(np.array([[-5.0], [5.0]]))[:, 0], [0, 9])


def test_subset_encode_decode_and_expectation():
    rows = sample_rows()
    disc = Discretizer(n_bins=50).fit(rows)
    tokens = disc.encode(rows)
    np.testing.assert_array_equal(disc.encode(rows[:, 1:3], dims=slice(1, 3)), tokens[:, 1:3])
    np.testing.assert_array_equal(disc.encode(rows[:, 2], dims=2), tokens[:, 2])
    np.testing.assert_allclose(disc.decode(tokens[:, 3], dims=3), disc.decode(tokens)[:, 3])
    # one-hot probabilities: the expectation is the bin centre; uniform: the mean of the centres
    one_hot = np.eye(50)[tokens[:8, 2:4]]  # [8, 2, 50]
    np.testing.assert_allclose(disc.expectation(one_hot, slice(2, 4)), disc.decode(tokens[:8])[:, 2:4])
    probs = torch.full((3, 50), 1 / 50, dtype=torch.float64)
    expected = torch.as_tensor(disc.centres[3].mean()).expand(3)
    torch.testing.assert_close(disc.expectation(probs, 3), expected)


def test_save_load_round_trip(tmp_path):
    disc = Discretizer(n_bins=30, strategy="uniform").fit(sample_rows())
    path = str(tmp_path / "disc.npz")
    disc.save(path)
    loaded = Discretizer.load(path)
    assert (loaded.n_bins, loaded.strategy) == (30, "uniform")
    np.testing.assert_array_equal(loaded.edges, disc.edges)
    assert set(disc.state_dict()) == {"edges", "strategy"}
    with np.load(path, allow_pickle=False) as f:  # plain arrays, no pickle
        assert f["edges"].shape == (4, 31)


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    disc = Discretizer(n_bins=10).fit(sample_rows())
    path = tmp_path / "disc.npz"

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(disc_module.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        disc.save(str(path))
    assert os.listdir(tmp_path) == []


def test_bad_settings_and_unfitted_use():
    with pytest.raises(ValueError, match="strategy"):
        Discretizer(strategy="kmeans")
    with pytest.raises(ValueError, match="uint8"):
        Discretizer(n_bins=300)
    with pytest.raises(RuntimeError, match="not fitted"):
        Discretizer().encode(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        Discretizer().fit(np.array([[0.0], [np.nan]]))
