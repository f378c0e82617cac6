"""Atomic file writes: a temporary file in the target's folder, then a rename.

A crash or a full disk leaves either the previous file or none, never a partial one. Also the check
of which files a saved folder lacks.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any


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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
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


def missing_files(folder: str, names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are not files in ``folder``."""
    return [name for name in names if not os.path.isfile(os.path.join(folder, name))]
