"""Per-dimension discretization of transition rows into ``uint8`` tokens (Janner et al., 2021).

Each dimension gets ``n_bins + 1`` edges. ``uniform`` spaces them evenly between the dimension's
minimum and maximum; ``quantile`` puts them at equally spaced quantiles, so every bin holds about the
same number of training values. A value decodes to the centre of its bin, so the round-trip error
of a value inside the fitted range is at most half the width of its bin.

Degenerate cases:
- a constant dimension gets ``n_bins + 1`` equal edges: every token decodes to the constant;
- quantile edges repeat where many values are equal (discrete-valued data). A value equal to a
  repeated edge is sent to the zero-width bin ``[v, v]``, which decodes to ``v`` exactly.

The fitted state is plain arrays (``edges`` and the strategy name), saved as ``.npz`` without pickle.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trajectory.io import atomic_write
from trajectory.loaders import load_npz, unreadable

STRATEGIES = ("uniform", "quantile")
Dims = int | slice | Sequence[int] | np.ndarray | None


def save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` (.npz) atomically (a file object: np.savez would append
    ".npz" to a name)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


class Discretizer:
    """Maps rows ``[N, D]`` to tokens ``uint8 [N, D]`` in ``[0, n_bins)`` and back."""

    def __init__(self, n_bins: int = 100, strategy: str = "quantile"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown discretization strategy '{strategy}'; "
                             f"choose one of {STRATEGIES}")
        if not 2 <= n_bins <= 256:
            raise ValueError(f"n_bins must be in [2, 256] (tokens are uint8), got {n_bins}")
        self.n_bins = n_bins
        self.strategy = strategy
        self.edges: np.ndarray | None = None  # [D, n_bins + 1] float64, non-decreasing per row

    # ------------------------------------------------------------------ fitting
    def fit(self, rows: np.ndarray) -> Discretizer:
        """Fit the edges of every dimension on ``rows [N, D]``."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(f"fit needs rows of shape [N, D] with N > 0, got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("fit needs finite values (found NaN or inf)")
        if self.strategy == "uniform":
            low, high = rows.min(axis=0), rows.max(axis=0)
            fractions = np.linspace(0.0, 1.0, self.n_bins + 1)
            edges = low[:, None] + (high - low)[:, None] * fractions[None, :]  # [D, n_bins + 1]
        else:
            quantiles = np.linspace(0.0, 1.0, self.n_bins + 1)
            edges = np.quantile(rows, quantiles, axis=0).T  # [D, n_bins + 1]
        # float rounding in the interpolation may break monotonicity by an ulp
        self.edges = np.maximum.accumulate(edges, axis=1)
        return self

    def _require_fit(self) -> np.ndarray:
        if self.edges is None:
            raise RuntimeError("the discretizer is not fitted: call fit(rows) or "
                               "Discretizer.load(path)")
        return self.edges

    @property
    def dim(self) -> int:
        return self._require_fit().shape[0]

    @property
    def centres(self) -> np.ndarray:
        """Bin centres ``[D, n_bins]``."""
        edges = self._require_fit()
        return 0.5 * (edges[:, :-1] + edges[:, 1:])

    @property
    def widths(self) -> np.ndarray:
        """Bin widths ``[D, n_bins]``."""
        edges = self._require_fit()
        return edges[:, 1:] - edges[:, :-1]

    def _dims(self, dims: Dims) -> np.ndarray:
        return np.arange(self.dim)[slice(None) if dims is None else dims]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, rows: np.ndarray, dims: Dims = None) -> np.ndarray:
        """Tokens ``uint8 [..., d]`` of values ``rows [..., d]`` over dimensions ``dims`` (default
        all). Values outside the fitted range go to the first or last bin."""
        edges = self._require_fit()
        index = self._dims(dims)
        scalar = np.ndim(index) == 0  # one dimension: rows [...] without a trailing axis
        rows = np.asarray(rows, dtype=np.float64)
        if scalar:
            rows, index = rows[..., None], np.atleast_1d(index)
        if rows.shape[-1] != index.size:
            raise ValueError(f"encode got rows of width {rows.shape[-1]}, expected {index.size}")
        flat = rows.reshape(-1, index.size)  # [M, d]
        tokens = np.empty(flat.shape, dtype=np.uint8)
        last = self.n_bins - 1
        for j, d in enumerate(index):
            e = edges[d]
            # bin b holds [e[b], e[b+1]); searching the interior edges gives b directly
            b = np.minimum(np.searchsorted(e[1:-1], flat[:, j], side="right"), last)
            # a value sitting on a repeated edge goes to the zero-width bin [v, v] (exact decode)
            on_tie = (b > 0) & (e[b] == flat[:, j]) & (e[b - 1] == e[b])
            tokens[:, j] = b - on_tie
        tokens = tokens.reshape(rows.shape)
        return tokens[..., 0] if scalar else tokens

    def decode(self, tokens: np.ndarray, dims: Dims = None) -> np.ndarray:
        """Bin centres ``float64 [..., d]`` of ``tokens [..., d]`` over dimensions ``dims``."""
        centres = self.centres[self._dims(dims)]  # [d, n_bins]
        tokens = np.asarray(tokens).astype(np.int64)
        if centres.ndim == 1:  # one dimension
            return centres[tokens]
        return centres[np.arange(centres.shape[0]), tokens]  # broadcast over [..., d]

    def expectation(self, probs: Any, dims: Dims) -> Any:
        """Expected value ``sum_b p_b * centre_b`` of categorical distributions over bins.

        ``probs [..., n_bins]`` with ``dims`` an int gives ``[...]``; ``probs [..., d, n_bins]`` with
        ``dims`` a slice or sequence of ``d`` dimensions gives ``[..., d]``. Works on numpy arrays and
        torch tensors (result on the tensor's device and dtype); the planner reads predicted
        rewards and values this way."""
        centres = self.centres[self._dims(dims)]  # [n_bins] or [d, n_bins]
        if isinstance(probs, torch.Tensor):
            centres_t = torch.as_tensor(centres, dtype=probs.dtype, device=probs.device)
            return (probs * centres_t).sum(-1)
        return (np.asarray(probs) * centres).sum(-1)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"edges": self._require_fit().copy(), "strategy": np.array(self.strategy)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Discretizer:
        edges = np.asarray(state["edges"], dtype=np.float64)
        if edges.ndim != 2 or edges.shape[1] < 3:
            raise ValueError(f"discretizer edges must be [D, n_bins + 1], got {edges.shape}")
        disc = cls(n_bins=edges.shape[1] - 1, strategy=str(state["strategy"]))
        disc.edges = edges
        return disc

    def save(self, path: str) -> None:
        """Write the edges and strategy to ``path`` (.npz), atomically."""
        save_npz_atomic(path, **self.state_dict())

    @classmethod
    def load(cls, path: str, fix: str = "fit and save the discretizer again") -> Discretizer:
        """The discretizer saved at ``path``; an UnreadableFileError naming the file and ``fix``
        when it is missing or damaged."""
        state = load_npz(path, fix, keys=("edges", "strategy"))
        try:
            return cls.from_state_dict(state)
        except ValueError as err:
            raise unreadable(path, str(err), fix) from None

    def __repr__(self) -> str:
        fitted = f"dim={self.dim}" if self.edges is not None else "unfitted"
        return f"Discretizer(n_bins={self.n_bins}, strategy='{self.strategy}', {fitted})"
