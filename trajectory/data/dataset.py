"""Transitions -> joined rows -> tokens -> training windows (Janner et al., 2021, Sec. 3).

Joined rows are ``[obs, act, reward, value]`` (width ``O + A + 2``). The value is the Trajectory
Transformer's discounted reward-to-go *after* the step, which excludes the step's own reward:

    V_t = sum_{k >= 0} gamma^k r_{t+1+k}      (within the episode; V = 0 at its last step)

so that ``r_t + gamma * V_t`` is the return from ``t``, which is how the planner combines a predicted
reward and value. ``data.bootstrap_timeouts`` departs from TT where an episode is cut by its time
limit: instead of falling to 0 over the last few hundred steps (which the state cannot show, so no
model can predict it), the value continues as if the episode went on at its own mean reward.
The terminal penalty is *added* to the reward of true terminals only (time-limit timeouts are not
failures). The tokenized array (``uint8 [N, D]``) is cached on disk, keyed by the
source's identity and every setting that changes the tokens.

Windows are ``seq_len`` transitions flattened to ``seq_len * D`` tokens, one per start index of
every episode. Training is next-token prediction over the flattened window, so an item gives the
shifted pair directly (see :class:`WindowDataset`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trajectory.config import DataConfig
from trajectory.data.discretizer import Discretizer, save_npz_atomic
from trajectory.data.sources import Transitions, load_transitions, source_identity
from trajectory.loaders import UnreadableFileError, load_npz, unreadable

CACHE_FORMAT = 2  # bump when the cached arrays change meaning (2: held-out episodes)
HOLDOUT_SEED = 20_211_206  # fixes which episodes are held out, independently of the run's seed


# ---------------------------------------------------------------------- rows
def value_to_go(rewards: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                discount: float, tail_values: np.ndarray | None = None) -> np.ndarray:
    """``V_t = r_{t+1} + discount * V_{t+1}`` per episode; at each episode's last step ``V`` is
    ``tail_values[e]`` (default 0: nothing follows).

    rewards: [N]; starts, lengths, tail_values: [E] -> values float64 [N]. Vectorised across
    episodes: all steps at the same distance from their episode's end are updated together."""
    n = len(rewards)
    r = np.asarray(rewards, dtype=np.float64)
    values = np.zeros(n)
    if tail_values is not None:
        values[starts + lengths - 1] = tail_values
    to_end = np.repeat(starts + lengths - 1, lengths) - np.arange(n)  # [N] steps left in episode
    order = np.argsort(to_end, kind="stable")
    counts = np.bincount(to_end)
    offset = counts[0]  # the last steps keep their tail value
    for k in range(1, len(counts)):
        idx = order[offset:offset + counts[k]]
        values[idx] = r[idx + 1] + discount * values[idx + 1]
        offset += counts[k]
    return values


def truncation_tail_values(rewards: np.ndarray, terminals: np.ndarray, starts: np.ndarray,
                           lengths: np.ndarray, discount: float) -> np.ndarray:
    """The value after the last step of each episode cut by a time limit, had it gone on at its
    mean reward: ``mean / (1 - discount)``; 0 after a true terminal. [E] float64."""
    means = np.add.reduceat(np.asarray(rewards, dtype=np.float64), starts) / lengths
    ended = np.asarray(terminals, dtype=bool)[starts + lengths - 1]
    return np.where(ended, 0.0, means / (1.0 - discount))


def joined_rows(transitions: Transitions, discount: float, terminal_penalty: float,
                bootstrap_timeouts: bool = False) -> np.ndarray:
    """Rows ``[obs, act, reward, value]``: float64 [N, O + A + 2]. With ``bootstrap_timeouts`` an
    episode cut by its time limit continues, for its value-to-go, at its own mean reward."""
    rewards = transitions.rewards.astype(np.float64) + terminal_penalty * transitions.terminals
    starts, lengths = transitions.episode_bounds()
    tails = (truncation_tail_values(rewards, transitions.terminals, starts, lengths, discount)
             if bootstrap_timeouts else None)
    values = value_to_go(rewards, starts, lengths, discount, tails)
    return np.concatenate([transitions.observations, transitions.actions,
                           rewards[:, None], values[:, None]], axis=1)


# ---------------------------------------------------------------------- held-out episodes
def held_out_episodes(n_episodes: int, fraction: float) -> np.ndarray:
    """Indices (sorted) of the whole episodes kept out of training: ``round(fraction * E)`` of them
    (none for a dataset too small to spare one), chosen by a fixed seed."""
    count = min(n_episodes - 1, round(fraction * n_episodes)) if fraction > 0 else 0
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(HOLDOUT_SEED).permutation(n_episodes)
    return np.sort(order[:count]).astype(np.int64)


def episode_mask(lengths: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """bool [N]: True for the transitions of ``episodes`` (episodes back to back)."""
    return np.repeat(np.isin(np.arange(len(lengths)), episodes), lengths)


# ---------------------------------------------------------------------- tokens (+ cache)
@dataclass
class TokenizedData:
    tokens: np.ndarray  # [N, D] uint8
    lengths: np.ndarray  # [E] int64, episode lengths (episodes are back to back)
    discretizer: Discretizer
    meta: dict  # env_id, source, obs_dim, act_dim, return statistics, held_out_episodes

    def split(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """(tokens, lengths) of the training episodes and of the held-out ones."""
        held = np.isin(np.arange(len(self.lengths)), self.meta.get("held_out_episodes", []))  # [E]
        in_held = np.repeat(held, self.lengths)  # [N]
        return ((self.tokens[~in_held], self.lengths[~held]),
                (self.tokens[in_held], self.lengths[held]))


def tokenize(transitions: Transitions, cfg: DataConfig) -> TokenizedData:
    """Rows -> tokens; the discretizer is fitted on the training episodes only, so nothing of the
    held-out episodes reaches training."""
    rows = joined_rows(transitions, cfg.discount, cfg.terminal_penalty,
                       cfg.bootstrap_timeouts)  # [N, D]
    _, lengths = transitions.episode_bounds()
    held = held_out_episodes(len(lengths), cfg.holdout_fraction)
    discretizer = Discretizer(cfg.n_bins, cfg.strategy).fit(rows[~episode_mask(lengths, held)])
    meta = {"env_id": transitions.env_id, "source": transitions.source,
            "obs_dim": transitions.obs_dim, "act_dim": transitions.act_dim,
            **transitions.return_stats(), "held_out_episodes": held.tolist()}
    return TokenizedData(discretizer.encode(rows), lengths, discretizer, meta)


def cache_path(cfg: DataConfig, identity: str) -> str:
    """``<cache_dir>/tokens/<source>-<hash>.npz``; the hash covers everything the tokens depend on."""
    key = {"format": CACHE_FORMAT, "source": identity, "n_bins": cfg.n_bins,
           "strategy": cfg.strategy, "discount": cfg.discount,
           "terminal_penalty": cfg.terminal_penalty, "env_id": cfg.env_id,
           "holdout_fraction": cfg.holdout_fraction, "bootstrap_timeouts": cfg.bootstrap_timeouts}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(cfg.source.rstrip("/")))[-40:]
    return os.path.join(cfg.cache_dir, "tokens", f"{slug}-{digest}.npz")


def save_tokens(path: str, data: TokenizedData) -> None:
    state = data.discretizer.state_dict()
    save_npz_atomic(path, tokens=data.tokens, lengths=data.lengths, edges=state["edges"],
                    strategy=state["strategy"], meta=np.array(json.dumps(data.meta)))


TOKEN_ARRAYS = ("tokens", "lengths", "edges", "strategy", "meta")


def load_tokens(path: str, fix: str = "delete it: the next run rebuilds it") -> TokenizedData:
    """A token cache of :func:`save_tokens`; an UnreadableFileError naming it and ``fix`` when it
    is damaged (truncated, overwritten, or arrays that do not fit together)."""
    arrays = load_npz(path, fix, keys=TOKEN_ARRAYS)
    tokens, lengths = arrays["tokens"], arrays["lengths"]
    if tokens.ndim != 2 or tokens.dtype != np.uint8 or lengths.ndim != 1 or int(lengths.sum()) != len(tokens):
        raise unreadable(path, f"its arrays do not fit together (tokens {tokens.dtype} {tokens.shape}, "
                               f"episode lengths summing to {int(lengths.sum())})", fix)
    try:
        discretizer = Discretizer.from_state_dict({"edges": arrays["edges"], "strategy": arrays["strategy"]})
        meta = json.loads(str(arrays["meta"]))
    except ValueError as err:  # bad edges or strategy; JSONDecodeError is a ValueError too
        raise unreadable(path, f"{type(err).__name__}: {err}", fix) from None
    if not isinstance(meta, dict) or discretizer.dim != tokens.shape[1]:
        raise unreadable(path, "its metadata or bin edges do not describe its tokens", fix)
    return TokenizedData(tokens, lengths, discretizer, meta)


def tokenized(cfg: DataConfig) -> tuple[TokenizedData, dict]:
    """Tokens for ``cfg``, from the cache when its key matches, else built and cached (a damaged
    cache is rebuilt, with one line saying so). Returns the data and ``{"cache_path", "cache_hit"}``."""
    identity = source_identity(cfg.source, cfg.cache_dir)
    if identity is not None:
        path = cache_path(cfg, identity)
        if os.path.isfile(path):
            try:
                return load_tokens(path, "rebuilding it from the dataset"), {"cache_path": path,
                                                                             "cache_hit": True}
            except UnreadableFileError as err:
                print(f"[data] {err}", flush=True)
    transitions = load_transitions(cfg.source, download=cfg.download, cache_dir=cfg.cache_dir,
                                   env_id=cfg.env_id or None)
    data = tokenize(transitions, cfg)
    identity = source_identity(cfg.source, cfg.cache_dir)  # exists now (generated/downloaded)
    path = cache_path(cfg, identity) if identity is not None else None
    if path is not None:
        save_tokens(path, data)
    return data, {"cache_path": path, "cache_hit": False}


# ---------------------------------------------------------------------- windows
Index = int | Sequence[int] | np.ndarray | torch.Tensor


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``seq_len`` transitions, sliced on demand from one token array.

    An item is a dict over the flattened window ``w`` of ``T = seq_len * D`` tokens:
      - ``x``: int64 [T - 1] = w[:-1], the model input (position j holds dimension j % D);
      - ``y``: int64 [T - 1] = w[1:], the next-token targets (y[j] is dimension (j + 1) % D);
      - ``mask``: float32 [T - 1], the loss weight of each target (0 or 1; action targets take their
        transition's weight after :meth:`weight_actions`);
      - ``resets`` (packed mode only): bool [T - 1], aligned with ``x``: True at the first token of
        an episode, where a core must forget the past.

    Padded mode (default, as TT): a window may start at every step of every episode; transitions
    past the episode's end are padding (token 0) with mask 0. Since the model is causal, padding
    never influences the targets before it.
    Packed mode: windows start anywhere in the concatenated episodes (``N - seq_len + 1`` of them)
    and may cross into the next episode, flagged by ``resets``; nothing is padded. The first token
    of a new episode is masked as a target: it would be predicted from the previous episode.

    Indexing with a sequence of indices returns the batch directly (``[B, T - 1]`` tensors), much
    faster than collating single items: use ``DataLoader(ds, sampler=BatchSampler(sampler, B,
    drop_last), batch_size=None)``, or call :meth:`batch`.
    """

    def __init__(self, tokens: np.ndarray, lengths: np.ndarray, seq_len: int, packed: bool = False):
        n, self.transition_dim = tokens.shape  # [N, D] uint8
        if int(lengths.sum()) != n:
            raise ValueError(f"episode lengths sum to {int(lengths.sum())}, expected {n}")
        self.seq_len, self.packed = seq_len, packed
        episode_starts = np.cumsum(lengths) - lengths  # [E]
        if packed:
            if n < seq_len:
                raise ValueError(f"packed windows need at least seq_len={seq_len} transitions, "
                                 f"got {n}")
            self.stream = tokens  # [N, D]
            self.valid = np.ones(n, dtype=bool)
            self.episode_start = np.zeros(n, dtype=bool)  # [N]
            self.episode_start[episode_starts] = True
            self.starts = np.arange(n - seq_len + 1)
        else:
            # each episode is followed by seq_len - 1 rows of padding in one stream
            pad = seq_len - 1
            dest = np.arange(n) + pad * np.repeat(np.arange(len(lengths)), lengths)  # [N]
            self.stream = np.zeros((n + pad * len(lengths), self.transition_dim), dtype=np.uint8)
            self.stream[dest] = tokens
            self.valid = np.zeros(len(self.stream), dtype=bool)  # [N + E * pad]
            self.valid[dest] = True
            self.starts = dest
        self._offsets = np.arange(seq_len)
        self.action_weights: np.ndarray | None = None  # per row of the stream: see weight_actions

    def weight_actions(self, row_weights: np.ndarray, action_dims: slice) -> None:
        """Weight the loss of every action token (dimensions ``action_dims`` of a transition) by its
        row's weight (``row_weights`` [rows of the stream]); other targets keep weight 1."""
        if len(row_weights) != len(self.stream):
            raise ValueError(f"{len(row_weights)} weights for {len(self.stream)} rows")
        d = self.transition_dim
        positions = np.arange(1, self.seq_len * d)  # the targets' places in the window
        self._target_row = positions // d
        self._target_is_action = ((positions % d) >= action_dims.start) & ((positions % d) < action_dims.stop)
        self.action_weights = np.asarray(row_weights, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, index: Index) -> dict[str, torch.Tensor]:
        """Windows ``index [B]`` as a dict of ``[B, T - 1]`` tensors."""
        index = np.asarray(index, dtype=np.int64)
        rows = self.starts[index][:, None] + self._offsets  # [B, L]
        b, d = len(index), self.transition_dim
        # numpy does the casts and copies: torch's threaded uint8 -> int64 cast of a small batch
        # was ~500x slower on a busy 2-core machine
        window = self.stream[rows].reshape(b, -1).astype(np.int64)  # [B, L * D]
        keep = np.repeat(self.valid[rows], d, axis=1)  # [B, L * D]
        out = {}
        if self.packed:
            first = np.zeros((b, self.seq_len, d), dtype=bool)
            first[:, :, 0] = self.episode_start[rows]
            first = first.reshape(b, -1)  # [B, L * D]
            keep[:, 1:] &= ~first[:, 1:]  # no target predicted across an episode boundary
            out["resets"] = torch.from_numpy(first[:, :-1].copy())
        mask = keep[:, 1:].astype(np.float32)
        if self.action_weights is not None:  # advantage-weighted action tokens
            mask *= np.where(self._target_is_action, self.action_weights[rows][:, self._target_row], 1.0)
        out.update(x=torch.from_numpy(np.ascontiguousarray(window[:, :-1])),
                   y=torch.from_numpy(np.ascontiguousarray(window[:, 1:])),
                   mask=torch.from_numpy(mask))
        return {k: out[k] for k in ("x", "y", "mask", "resets") if k in out}

    def __getitem__(self, index: Index) -> dict[str, torch.Tensor]:
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.ndim == 0):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"window {i} out of range for {len(self)} windows")
            return {k: v[0] for k, v in self.batch([i % len(self)]).items()}
        return self.batch(index)


# ---------------------------------------------------------------------- what the trainer calls
@dataclass
class Datasets:
    train: WindowDataset
    held_out: WindowDataset | None  # windows of the held-out episodes (None: nothing held out)
    discretizer: Discretizer
    info: dict


def build_datasets(cfg: DataConfig) -> Datasets:
    """Training windows, held-out windows, the fitted discretizer and an info dict for ``cfg``
    (tokens cached on disk).

    info: obs_dim, act_dim, transition_dim, vocab_size, seq_len, env_id, source, n_transitions,
    n_episodes, n_windows (training), held_out_episodes (indices), n_held_out_windows, discount,
    packed, return_mean/std/count and normalized_mean of the behaviour policy (all episodes),
    cache_path, cache_hit, build_seconds."""
    start = time.time()
    data, cache = tokenized(cfg)
    (tokens, lengths), (held_tokens, held_lengths) = data.split()
    dataset = WindowDataset(tokens, lengths, cfg.seq_len, packed=cfg.packed)
    held_out = (WindowDataset(held_tokens, held_lengths, cfg.seq_len, packed=False)
                if len(held_lengths) else None)
    info = {**data.meta, "transition_dim": int(data.tokens.shape[1]), "vocab_size": cfg.n_bins,
            "seq_len": cfg.seq_len, "n_transitions": len(data.tokens),
            "n_episodes": len(data.lengths), "n_windows": len(dataset),
            "n_held_out_windows": len(held_out) if held_out is not None else 0,
            "discount": cfg.discount, "packed": cfg.packed, **cache,
            "build_seconds": round(time.time() - start, 3)}
    return Datasets(dataset, held_out, data.discretizer, info)


def build_dataset(cfg: DataConfig) -> tuple[WindowDataset, Discretizer, dict]:
    """The training windows, discretizer and info of :func:`build_datasets`."""
    built = build_datasets(cfg)
    return built.train, built.discretizer, built.info


def describe(info: dict) -> str:
    """One line for logs."""
    norm = info.get("normalized_mean")
    score = f", normalized {norm:.1f}" if norm is not None else ""
    held = len(info.get("held_out_episodes", []))
    return (f"{info['source']}: {info['n_transitions']:,} transitions, {info['n_episodes']} episodes "
            f"({held} held out), {info['n_windows']:,} training windows of {info['seq_len']} x "
            f"{info['transition_dim']} tokens; "
            f"behaviour return {info['return_mean']:.1f} +- {info['return_std']:.1f}{score}"
            f" ({'cache hit' if info['cache_hit'] else 'built'} in {info['build_seconds']:.1f} s)")
