"""Where transitions come from: a Minari id, a D4RL-layout HDF5 file, or the local reproduction.

    load_transitions("mujoco/halfcheetah/medium-v0")        # Minari, from the local store
    load_transitions("path/to/halfcheetah_medium-v2.hdf5")  # D4RL layout
    load_transitions("halfcheetah-medium")                  # generated on first use, then cached

Minari ids are looked up in ``<cache_dir>/minari`` (where :mod:`trajectory.behaviour.generate`
writes) and then in Minari's own store (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``).
Nothing is downloaded unless ``download=True``. Every problem with the input raises one
:class:`DatasetError` that names the file or key and the fix.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from trajectory.behaviour.reproductions import REPRODUCTIONS
from trajectory.configutil import ConfigError
from trajectory.envs import has_reference_returns, normalized_score
from trajectory.io import check_writable_folder
from trajectory.loaders import first_line

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
MINARI_ID_RE = re.compile(r"^(?:[-_\w][-_\w/]*/)?[-_.\w]+-v\d+$")  # (namespace/)name-v<version>
_FAMILY_ENV_IDS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}


class DatasetError(ConfigError):
    """A dataset that cannot be used as given; the message names the file or key and the fix (a
    ConfigError, so the command-line tools report it in one line)."""


@dataclass
class Transitions:
    """Flat transitions of one dataset, episodes back to back.

    An episode ends at a step with ``terminals`` (the environment ended it: a true terminal) or
    ``timeouts`` (the time limit cut it). Steps after the last such flag form an unfinished episode,
    kept for training but left out of the return statistics."""

    observations: np.ndarray  # [N, O] float32
    actions: np.ndarray  # [N, A] float32
    rewards: np.ndarray  # [N] float32
    terminals: np.ndarray  # [N] bool
    timeouts: np.ndarray  # [N] bool
    env_id: str | None  # gymnasium id of the environment, if known
    source: str  # what was loaded (spec as given)
    episode_returns: np.ndarray = field(init=False)  # [E_complete] float64, undiscounted

    def __post_init__(self) -> None:
        starts, lengths = self.episode_bounds()
        ends = starts + lengths - 1
        complete = (self.terminals | self.timeouts)[ends]
        sums = np.add.reduceat(self.rewards.astype(np.float64), starts)
        self.episode_returns = sums[complete]

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Start index and length of every episode: ``(int64 [E], int64 [E])``."""
        done = self.terminals | self.timeouts
        ends = np.flatnonzero(done)
        if len(ends) == 0 or ends[-1] != len(done) - 1:
            ends = np.append(ends, len(done) - 1)  # the unfinished tail is an episode too
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        return starts, (ends + 1 - starts).astype(np.int64)

    def return_stats(self) -> dict:
        """Behaviour-policy returns of complete episodes, and the D4RL normalized mean if known."""
        returns = self.episode_returns
        stats = {"return_mean": float(returns.mean()) if len(returns) else float("nan"),
                 "return_std": float(returns.std()) if len(returns) else float("nan"),
                 "return_count": len(returns), "normalized_mean": None}
        if self.env_id and len(returns) and has_reference_returns(self.env_id):
            stats["normalized_mean"] = float(normalized_score(self.env_id, returns).mean())
        return stats


def check_arrays(arrays: dict[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """Validate raw arrays (keys of :data:`REQUIRED_KEYS`) and convert them to Transitions dtypes."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DatasetError(f"{origin}: missing key(s) {missing}; a D4RL-layout dataset needs "
                           f"{list(REQUIRED_KEYS)} ('timeouts': True on the last step of each "
                           f"time-limited episode)")
    out = {}
    for key in REQUIRED_KEYS:
        value = np.asarray(arrays[key])
        if key in ("rewards", "terminals", "timeouts") and value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]  # [N, 1] -> [N]
        want = 2 if key in ("observations", "actions") else 1
        if value.ndim != want:
            raise DatasetError(f"{origin}: '{key}' must be {want}-D, got shape {value.shape}")
        out[key] = value
    n = len(out["rewards"])
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{origin}: arrays have different lengths {lengths}; every key needs one "
                           f"entry per transition")
    if n == 0:
        raise DatasetError(f"{origin}: the dataset is empty (0 transitions)")
    for key in ("observations", "actions", "rewards"):
        if not np.issubdtype(out[key].dtype, np.number):
            raise DatasetError(f"{origin}: '{key}' must be numeric, got dtype {out[key].dtype}")
        out[key] = out[key].astype(np.float32)
        bad = ~np.isfinite(out[key])
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(f"{origin}: '{key}' holds {int(bad.sum())} NaN/inf value(s) (first at "
                               f"transition {row}); clean or regenerate the dataset")
    for key in ("terminals", "timeouts"):
        out[key] = out[key].astype(bool)
    return out


# ---------------------------------------------------------------------- D4RL HDF5 files
def _env_id_for_file(path: str, attrs_env_id: str | None) -> str | None:
    if attrs_env_id:
        return attrs_env_id
    name = os.path.basename(path).lower()
    for family, env_id in _FAMILY_ENV_IDS.items():
        if name.startswith(family):
            return env_id
    return None


def _missing_hdf5(path: str) -> DatasetError:
    return DatasetError(f"HDF5 file not found: '{path}'. Check data.source, or use a Minari id or a "
                        f"local reproduction: {', '.join(reproduction_names())}")


def load_hdf5(path: str, env_id: str | None = None) -> Transitions:
    """Read a D4RL-layout HDF5 file (``next_observations`` and other keys are ignored)."""
    import h5py

    if not os.path.isfile(path):
        raise _missing_hdf5(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                raise DatasetError(f"'{path}': missing key(s) {missing}; a D4RL-layout file needs "
                                   f"{list(REQUIRED_KEYS)} ('timeouts': True on the last step of each "
                                   f"time-limited episode)")
            arrays = {k: f[k][()] for k in REQUIRED_KEYS}
            file_env_id = f.attrs.get("env_id")
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py raises many kinds for a damaged file
        raise DatasetError(f"cannot read HDF5 file '{path}' ({first_line(err)}); it is truncated, "
                           f"corrupt or not HDF5: download or copy it again") from None
    if isinstance(file_env_id, bytes):
        file_env_id = file_env_id.decode()
    arrays = check_arrays(arrays, f"'{path}'")
    return Transitions(**arrays, env_id=env_id or _env_id_for_file(path, file_env_id), source=path)


# ---------------------------------------------------------------------- Minari datasets
def minari_store() -> str:
    """Minari's own dataset root (not created here, unlike Minari's helper)."""
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari",
                                                                  "datasets")


def find_minari(dataset_id: str, cache_dir: str) -> str | None:
    """Folder of a local Minari dataset (``<root>/<id>``), searching ``<cache_dir>/minari`` first."""
    for root in (os.path.join(cache_dir, "minari"), minari_store()):
        path = os.path.join(root, dataset_id)
        if os.path.isfile(os.path.join(path, "data", "metadata.json")):
            return path
    return None


def _missing_minari(dataset_id: str, cache_dir: str) -> DatasetError:
    hint, local = "", "data.source=halfcheetah-medium"
    for family in _FAMILY_ENV_IDS:
        if family in dataset_id and "medium" in dataset_id:
            hint = f" (D4RL's {family}-medium-v2 is Minari's mujoco/{family}/medium-v0)"
            local = f"data.source={family}-medium"
    return DatasetError(
        f"Minari dataset '{dataset_id}' is not available locally{hint}; searched "
        f"'{os.path.join(cache_dir, 'minari')}' and '{minari_store()}'. Either run "
        f"`minari download {dataset_id}` on a machine with network (copy the folder over and/or set "
        f"MINARI_DATASETS_PATH), set data.download=true here if this machine has network, or use the "
        f"local reproduction: {local}")


def _download_minari(dataset_id: str) -> str:
    import minari

    try:
        minari.load_dataset(dataset_id, download=True)
    except ImportError as err:
        raise DatasetError(f"downloading '{dataset_id}' needs huggingface_hub: pip install "
                           f"'minari[hf]' ({err})") from None
    except Exception as err:  # noqa: BLE001 - network, hub and unknown-id errors all end here
        raise DatasetError(f"download of Minari dataset '{dataset_id}' failed: {err}. Check the id "
                           f"(`minari list remote`) and the network, or use "
                           f"data.source=halfcheetah-medium") from None
    return os.path.join(minari_store(), dataset_id)


def load_minari_path(path: str, origin: str) -> Transitions:
    """Read the Minari dataset stored in folder ``path`` (``<root>/<id>``) into Transitions."""
    import gymnasium as gym
    from minari import MinariDataset

    try:
        dataset = MinariDataset(os.path.join(path, "data"))
        if not (isinstance(dataset.observation_space, gym.spaces.Box)
                and isinstance(dataset.action_space, gym.spaces.Box)
                and len(dataset.observation_space.shape) == 1):
            raise DatasetError(f"{origin}: only flat Box observation and action spaces are supported, "
                               f"got {dataset.observation_space} / {dataset.action_space}")
        parts: dict[str, list] = {k: [] for k in REQUIRED_KEYS}
        for episode in dataset.iterate_episodes():
            if len(episode.observations) != len(episode.rewards) + 1:
                raise DatasetError(f"{origin}: episode {episode.id} has {len(episode.observations)} "
                                   f"observations for {len(episode.rewards)} steps (expected one "
                                   f"more, the final observation)")
            parts["observations"].append(episode.observations[:-1])
            parts["actions"].append(episode.actions)
            parts["rewards"].append(episode.rewards)
            parts["terminals"].append(episode.terminations)
            parts["timeouts"].append(episode.truncations)
        env_spec = dataset.env_spec
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py, json and Minari's own checks raise many kinds
        raise DatasetError(f"cannot read {origin} at '{path}' ({first_line(err)}); it is corrupt or "
                           f"incomplete: delete the folder and download/generate it again") from None
    if not parts["rewards"]:
        raise DatasetError(f"{origin}: the dataset is empty (0 episodes)")
    for key, episodes in parts.items():
        widths = {episode.shape[1:] for episode in episodes}
        if len(widths) > 1:
            raise DatasetError(f"{origin} at '{path}': the episodes' '{key}' differ in shape "
                               f"({sorted(widths)}); it is corrupt: delete the folder and "
                               f"download/generate it again")
    arrays = check_arrays({k: np.concatenate(v) for k, v in parts.items()}, origin)
    return Transitions(**arrays, env_id=env_spec.id if env_spec is not None else None, source=origin)


def load_minari(dataset_id: str, *, download: bool = False, cache_dir: str = "data") -> Transitions:
    path = find_minari(dataset_id, cache_dir)
    if path is None:
        if not download:
            raise _missing_minari(dataset_id, cache_dir)
        path = _download_minari(dataset_id)
    return load_minari_path(path, f"Minari dataset '{dataset_id}'")


# ---------------------------------------------------------------------- the local reproductions
def _check_policy(name: str) -> None:
    repro = REPRODUCTIONS[name]
    if not os.path.isfile(repro.policy):
        raise DatasetError(f"cannot generate {name}: its behaviour policy {repro.policy} is "
                           f"missing. Train one (python -m trajectory.behaviour.train "
                           f"env_id={repro.env_id} ...; see docs/data.md) "
                           f"and install it with "
                           f"python -m trajectory.behaviour.card <snapshot.pt> {repro.policy}")


def load_reproduction(name: str = "halfcheetah-medium", cache_dir: str = "data",
                      progress: bool = True) -> Transitions:
    """A D4RL medium dataset reproduced locally (one of :data:`REPRODUCTIONS`): generated once
    into ``<cache_dir>/minari``, then read from there."""
    from trajectory.behaviour import generate

    repro = REPRODUCTIONS[name]
    root = os.path.join(cache_dir, "minari")
    path = os.path.join(root, repro.dataset_id)
    for folder in generate.remove_stale_generations(root):
        print(f"[data] removed {folder}, left half-written by a generation that was stopped", flush=True)
    if not os.path.isfile(os.path.join(path, "data", "metadata.json")):
        _check_policy(name)
        print(f"[data] generating {name} ({repro.steps:,} steps of {repro.env_id}) into {path}; "
              f"this happens once", flush=True)
        generate.generate_dataset(root, repro.dataset_id, steps=repro.steps, max_steps=repro.max_steps,
                                  seed=repro.seed, policy_path=repro.policy, env_id=repro.env_id,
                                  progress=progress)
    transitions = load_minari_path(path, f"the {name} reproduction")
    transitions.source = name
    return transitions


# ---------------------------------------------------------------------- one entry point
def reproduction_names() -> list[str]:
    return sorted(REPRODUCTIONS)


def source_kind(spec: str) -> str:
    """'reproduction' | 'hdf5' | 'minari' for a data.source string; unknown forms raise."""
    if spec in reproduction_names():
        return "reproduction"
    if spec.lower().endswith((".hdf5", ".h5")) or os.path.isfile(spec):
        return "hdf5"
    if MINARI_ID_RE.match(spec):
        return "minari"
    raise DatasetError(f"unknown data source '{spec}'. Use a Minari id such as "
                       f"'mujoco/halfcheetah/medium-v0', a path to a D4RL-layout .hdf5 file, or a "
                       f"local reproduction: {', '.join(reproduction_names())}")


def source_identity(spec: str, cache_dir: str = "data") -> str | None:
    """A string that changes whenever the data behind ``spec`` changes (file path, size and
    modification time), or None when the data is not on disk yet. Used to key caches."""
    kind = source_kind(spec)
    if kind == "hdf5":
        files = [spec] if os.path.isfile(spec) else []
    else:
        if kind == "reproduction":
            path = os.path.join(cache_dir, "minari", REPRODUCTIONS[spec].dataset_id)
            path = path if os.path.isfile(os.path.join(path, "data", "metadata.json")) else None
        else:
            path = find_minari(spec, cache_dir)
        data = os.path.join(path, "data") if path else None
        files = sorted(os.path.join(data, f) for f in os.listdir(data)) if data else []
    if not files:
        return None
    stamps = [f"{os.path.abspath(f)}:{os.path.getsize(f)}:{os.stat(f).st_mtime_ns}" for f in files]
    return f"{kind}:{spec}|" + "|".join(stamps)


def check_source(spec: str, *, download: bool = False, cache_dir: str = "data") -> None:
    """What :func:`load_transitions` would refuse, found without reading or generating anything (and
    without torch): an unknown form, a missing file, a Minari id that is neither local nor allowed to
    download, a reproduction that is not generated yet and has no behaviour policy to generate it."""
    kind = source_kind(spec)
    if kind == "hdf5" and not os.path.isfile(spec):
        raise _missing_hdf5(spec)
    if kind == "minari" and find_minari(spec, cache_dir) is None and not download:
        raise _missing_minari(spec, cache_dir)
    generate = kind == "reproduction" and source_identity(spec, cache_dir) is None
    if generate:
        _check_policy(spec)
    # the token cache (tens of MB) and a reproduction still to be generated (about 200 MB) go there
    check_writable_folder(cache_dir, (320 if generate else 64) << 20, f"data.cache_dir={cache_dir}",
                          "choose another with data.cache_dir=<folder>")


def load_transitions(spec: str, *, download: bool = False, cache_dir: str = "data",
                     env_id: str | None = None) -> Transitions:
    """Load ``spec`` (Minari id, D4RL-layout HDF5 path, or a reproduction such as
    ``halfcheetah-medium``) as Transitions.

    ``env_id`` sets the environment of an HDF5 source (by default its ``env_id`` attribute, else
    inferred from the file name, e.g. ``halfcheetah_medium-v2.hdf5`` -> HalfCheetah-v5); Minari
    datasets name their own."""
    kind = source_kind(spec)
    if kind == "reproduction":
        return load_reproduction(spec, cache_dir)
    if kind == "hdf5":
        return load_hdf5(spec, env_id)
    return load_minari(spec, download=download, cache_dir=cache_dir)
