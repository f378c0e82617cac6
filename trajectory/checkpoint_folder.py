"""Checkpoint folders written atomically and durably, and found again after a crash: the mechanics
every trainer of the package saves with (the trajectory model's, the critic's, SAC's and the
experiments'), apart from what each puts in its folder.

A save fills a temporary folder beside the checkpoint, fsyncs its files and itself, marks it
COMPLETE, moves the old checkpoint aside and renames the new one in. A crash leaves either
``checkpoint/`` or, between the two renames, complete folders beside it, which
:func:`checkpoint_dir` picks up (the newest); the next save clears what a crash left.
"""
from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable

from trajectory.io import DiskFullError, disk_full, is_disk_full, missing_files

CHECKPOINT_DIR = "checkpoint"
# a train.py checkpoint's files: an .old-* folder holding them is complete even where it predates
# the COMPLETE mark
REQUIRED = ("config.yaml", "model.pt", "discretizer.npz")

COMPLETE = "COMPLETE"  # written last into a checkpoint folder, once every file is on disk


def checkpoint_dir(path: str) -> str:
    """Accept a run directory (runs/<name>) or the checkpoint directory itself. A run whose save
    was cut off between moving the old checkpoint aside and renaming the new one in has no
    ``checkpoint/``: the newest complete folder left beside it is used instead."""
    nested = os.path.join(path, CHECKPOINT_DIR)
    if os.path.isdir(nested):
        return nested
    return left_aside(nested) or path


def left_aside(path: str) -> str | None:
    """The newest complete ``<path>.tmp-*`` (marked COMPLETE) or ``<path>.old-*`` folder."""
    candidates = [d for d in glob.glob(f"{glob.escape(path)}.tmp-*")
                  if os.path.isfile(os.path.join(d, COMPLETE))]
    candidates += [d for d in glob.glob(f"{glob.escape(path)}.old-*")
                   if os.path.isfile(os.path.join(d, COMPLETE)) or not missing_files(d, REQUIRED)]
    return max(candidates, key=os.path.getmtime) if candidates else None


def fsync(path: str) -> None:
    """Flush a file's or a folder's contents to disk (a rename is durable only after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint_folder(path: str, write: Callable[[str], None]) -> None:
    """Replace the checkpoint folder ``path`` atomically and durably; every trainer saves this way.

    ``write(folder)`` fills a fresh temporary folder beside ``path``; its files and the folder are
    fsynced and marked COMPLETE, the old checkpoint is moved aside and the new one renamed in, and
    the parent folder is fsynced. A crash at any point leaves a loadable checkpoint: the previous
    one, the new one, or (between the two renames) a complete folder that :func:`checkpoint_dir`
    finds beside ``path``. A failed ``write`` removes its temporary folder; a full disk is reported
    as a DiskFullError naming the folder and what was kept."""
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)  # and the run folder above it, on a first save
    try:
        write(tmp)
        for name in os.listdir(tmp):
            fsync(os.path.join(tmp, name))
        open(os.path.join(tmp, COMPLETE), "w").close()
        fsync(tmp)
    except BaseException as err:
        full = is_disk_full(err, tmp)  # asked before the temporary folder's space is given back
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves the previous checkpoint alone
        if full:
            raise checkpoint_disk_full(path) from None
        raise
    if os.path.exists(path):  # rename(2) cannot replace a non-empty directory: move the old aside
        os.replace(path, f"{path}.old-{os.getpid()}")
    os.replace(tmp, path)  # a crash just before this leaves both folders: see left_aside
    fsync(os.path.dirname(os.path.abspath(path)))
    remove_left_aside(path)


def checkpoint_disk_full(path: str) -> DiskFullError:
    """The one line of a checkpoint save that found its disk full."""
    if os.path.isdir(path):
        kept, again = f"the previous one, {path}, is kept", "resume"
    else:
        kept, again = "none was saved before", "start"
    return disk_full(os.path.dirname(os.path.abspath(path)), f"the checkpoint was not saved ({kept})",
                     f"free some space there, then {again} the run again")


def remove_left_aside(path: str) -> None:
    """Delete the ``.old-*`` / ``.tmp-*`` folders a checkpoint's saves left beside ``path``."""
    for stale in glob.glob(f"{glob.escape(path)}.old-*") + glob.glob(f"{glob.escape(path)}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
