"""Atomic file writes: a temporary file in the target's folder, then a rename.

A crash or a full disk leaves either the previous file or none, never a partial one; a full disk is
reported as such (:class:`DiskFullError`, one line naming the folder). Also the check of which files
a saved folder lacks.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from trajectory.configutil import ConfigError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch writes a file it was given by name in C++ and reports a full disk only as a failed write:
# a failed write that leaves less than this free on its disk is taken for a full disk
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(ConfigError):
    """A write that ran out of disk space or quota; the message names the folder and what was kept
    (a ConfigError, so the command-line tools report it in one line)."""


def is_disk_full(err: BaseException, folder: str | None = None) -> bool:
    """Whether ``err`` (or an error it was raised from or while handling) is a full disk or quota;
    with ``folder``, also a failed write (OSError, RuntimeError) that left its disk nearly full."""
    seen: BaseException | None = err
    for _ in range(8):  # a short chain: causes can form a loop
        if seen is None:
            break
        if isinstance(seen, DiskFullError) or (isinstance(seen, OSError) and seen.errno in NO_SPACE):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is None or not isinstance(err, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def disk_full(folder: str, consequence: str,
              fix: str = "free some space there (or write elsewhere) and run again") -> DiskFullError:
    """The one line of a write that found the disk full: the folder, what that means, the fix."""
    return DiskFullError(f"no space left on the disk holding {os.path.abspath(folder)}: {consequence}; "
                         f"{fix}")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(path) as f: ...`` writes ``path`` only if the block completes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException as err:
        full = is_disk_full(err, folder)  # before the temporary file's space is given back
        if os.path.exists(tmp):
            os.remove(tmp)
        if full and not isinstance(err, DiskFullError):
            kept = "the earlier version is kept" if os.path.exists(path) else "nothing was written"
            raise disk_full(folder, f"{os.path.basename(path)} was not saved ({kept})") from None
        raise


def atomic_write(path: str, write: Callable[[IO], Any], mode: str = "wb") -> None:
    with atomic_open(path, mode) as f:
        write(f)


def save_torch(obj: Any, path: str) -> None:
    import torch
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj: Any, path: str, indent: int = 1) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=indent), mode="w")


def save_text(text: str, path: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def check_writable_folder(folder: str, needed_bytes: int, name: str, fix: str) -> None:
    """Before long work: ``folder`` is (or can be made) a folder this process can write, with room
    for about ``needed_bytes``; otherwise one line naming it (``name``, e.g. ``out=<folder>``) and
    ``fix`` (e.g. "name another folder with out=<folder>")."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{name} is a file, not a folder: {fix}")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # the only sure test of writing there
            pass
    except OSError as err:
        if is_disk_full(err):
            raise disk_full(folder, "nothing can be written there", fix) from None
        raise ConfigError(f"{name} cannot be written ({err.strerror or err}): {fix}") from None
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise disk_full(folder, f"{free / 1e6:.1f} MB free where what will be written needs about "
                                f"{needed_bytes / 1e6:.0f} MB", f"free some space there or {fix}")


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, so that JSON written from
    it is standard JSON (null) rather than Python's bare NaN."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def missing_files(folder: str, names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are not files in ``folder``."""
    return [name for name in names if not os.path.isfile(os.path.join(folder, name))]
