"""One reader per kind of file the package reads back: JSON, YAML, torch state files, .npz arrays.

Whatever can be wrong with such a file (missing, truncated, overwritten, another format, not the
content expected) becomes one :class:`UnreadableFileError` whose message names the file, says what
is wrong and gives the fix the caller passes (who knows whether to retrain, delete or regenerate):

    metrics = load_json(path, fix="delete it and resume from the checkpoint")
    state = load_torch_state(path, fix="train the critic again", keys=("optimizer", "step"))
    arrays = load_npz(path, fix="delete it: the next run rebuilds it", keys=("edges",))

Torch-free at import (torch loads inside :func:`load_torch_state`), so the JSON and YAML readers
serve the checks that run before torch.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from trajectory.configutil import ConfigError


class UnreadableFileError(ConfigError):
    """A file that cannot be used as it is; the message names it, what is wrong and the fix (a
    ConfigError, so the command-line tools print it in one line and exit with status 2)."""


def unreadable(path: str, problem: str, fix: str) -> UnreadableFileError:
    """The one line for ``path``: ``cannot read <path>: <problem>; <fix>``."""
    return UnreadableFileError(f"cannot read {path}: {problem}; {fix}")


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (parsers' run to several), else its type."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err)}"


def _missing(path: str, fix: str) -> UnreadableFileError:
    return unreadable(path, "the file is missing", fix)


def _require(path: str, fix: str, value: Any, keys: Iterable[str], what: str) -> Any:
    """``value`` when it is a dict holding ``keys``; otherwise the error naming what it lacks."""
    if not isinstance(value, dict):
        raise unreadable(path, f"it holds a {type(value).__name__}, not {what}", fix)
    absent = [key for key in keys if key not in value]
    if absent:
        raise unreadable(path, f"it lacks {', '.join(map(repr, absent))}, so it is not {what}", fix)
    return value


def load_json(path: str, fix: str, keys: Iterable[str] = ()) -> dict:
    """A JSON object (dict) holding ``keys``."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise _missing(path, fix) from None
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise unreadable(path, f"it is truncated or not JSON ({_reason(err)})", fix) from None
    return _require(path, fix, value, keys, "the JSON object expected")


def load_yaml(path: str, fix: str) -> dict:
    """A YAML mapping, as plain containers."""
    from omegaconf import DictConfig, OmegaConf

    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise _missing(path, fix) from None
    except Exception as err:  # noqa: BLE001 - yaml's scanner and parser errors have no common base
        raise unreadable(path, f"it is truncated or not YAML ({_reason(err)})", fix) from None
    if not isinstance(loaded, DictConfig):
        raise unreadable(path, "it holds a list, not a mapping of settings", fix)
    return OmegaConf.to_container(loaded)


def load_torch_state(path: str, fix: str, keys: Iterable[str] = ()) -> dict:
    """A dict of tensors and plain containers saved with ``torch.save`` (read with weights_only, on
    the CPU), holding ``keys``."""
    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise _missing(path, fix) from None
    except Exception as err:  # noqa: BLE001 - a truncated zip, another format, pickled objects, ...
        # torch's own message advises weights_only=False: for a damaged file only its type helps
        raise unreadable(path, f"the file is truncated, corrupt or not a torch state file "
                               f"({type(err).__name__})", fix) from None
    return _require(path, fix, value, keys, "the state expected")


def load_npz(path: str, fix: str, keys: Iterable[str] = ()) -> dict:
    """The arrays of an .npz archive (no pickled objects), read whole, holding ``keys``."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}  # reads (and checks) every one
    except FileNotFoundError:
        raise _missing(path, fix) from None
    except Exception as err:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, ValueError, ...
        # numpy calls a file that is not an archive "pickled data" and suggests loading it unsafely
        raise unreadable(path, f"the file is truncated, corrupt or not an .npz archive "
                               f"({type(err).__name__})", fix) from None
    return _require(path, fix, arrays, keys, "the archive expected")
