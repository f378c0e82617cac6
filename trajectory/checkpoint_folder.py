"""Checkpoint folders written atomically and durably, and found again after a crash: the mechanics
every trainer of the package saves with (the trajectory model's, the critic's, SAC's and the
experiments'), apart from what each puts in its folder.

A save fills a temporary folder beside the checkpoint, fsyncs its files and itself, marks it
COMPLETE, moves the old checkpoint aside and renames the new one in. A crash leaves either
``checkpoint/`` or, between the two renames, complete folders beside it, which
:func:`checkpoint_dir` picks up (the newest); the next save clears what a crash left.
"""
from __future__ import annotations

import contextlib
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

CRITIC_DIR = "critic"  # train_critic.py's folder inside a run
# What the package writes into a run folder: the trainer's files, the critic's folder, eval.py's reports
# (eval, eval_<quantize>, make demo's eval_<planner>_<seed>) and int8 models, profile.py's folder and
# make demo's summary. ``overwrite=true`` removes all of them, and nothing else.
RUN_OUTPUTS = (CHECKPOINT_DIR, "tb", "config.yaml", CRITIC_DIR, "eval", "eval_*", "quantized", "profile",
               "demo_summary.json")


def run_folder(path: str) -> str:
    """``runs/x`` for ``runs/x`` or its checkpoint folder ``runs/x/checkpoint``."""
    path = os.path.normpath(path)
    if os.path.basename(path) == CHECKPOINT_DIR and os.path.isfile(os.path.join(path, "config.yaml")):
        return os.path.dirname(path)
    return path


def default_run_name(cfg) -> str:
    """``<source>-<core>`` for a TrainRunConfig without a name."""
    source = os.path.splitext(os.path.basename(cfg.data.source.rstrip("/")))[0].replace("/", "-")
    return f"{source}-{cfg.model.core}"


def train_run_dir(cfg, resume_dir: str | None) -> str:
    """The folder train.py writes: the resumed run's, or ``<runs_dir>/<name>``."""
    if resume_dir is not None:
        return run_folder(resume_dir)
    return os.path.join(cfg.runs_dir, cfg.name or default_run_name(cfg))


def critic_folder(run_dir: str) -> str:
    """Where train_critic.py writes a run's critic, and planners look for it."""
    return os.path.join(run_dir, CRITIC_DIR)


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


def clear_run_outputs(run_dir: str, keep: tuple[str, ...] = ()) -> list[str]:
    """Remove what an earlier run left in ``run_dir`` (:data:`RUN_OUTPUTS` but the names in ``keep``,
    and the checkpoint folders a cut-off save left aside); returns the names removed. A critic being
    trained in the run is refused first (its folder is locked while it is written), before anything
    is removed."""
    from trajectory.run_lock import folder_lock
    critic = os.path.join(run_dir, CRITIC_DIR)
    removed = []
    critic_lock = folder_lock(critic, "train.py overwrite=true") if os.path.isdir(critic) else None
    with critic_lock or contextlib.nullcontext():
        for pattern in RUN_OUTPUTS:
            for path in sorted(glob.glob(os.path.join(glob.escape(run_dir), pattern))):
                if os.path.basename(path) in keep:
                    continue
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                removed.append(os.path.basename(path))
    remove_left_aside(os.path.join(run_dir, CHECKPOINT_DIR))
    return removed
