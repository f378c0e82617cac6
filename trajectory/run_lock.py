"""One writer per run folder: an advisory lock file that a trainer holds while it writes the folder.

Two trainers of one run would interleave their checkpoints and each would clear the other's
temporary folders. The lock is ``fcntl.flock`` on ``<folder>/writer.lock``: the kernel releases it
when its process ends, however it ends, so a lock left by a killed process is free to take (a
one-line note says so). The file holds the writer's PID, host, command and start time for the
message that refuses a second writer. Torch-free: a second writer is refused before torch loads.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

from trajectory.configutil import ConfigError
from trajectory.io import disk_full, is_disk_full

LOCK_FILE = "writer.lock"


class FolderBusy(ConfigError):
    """Another live process writes the folder."""


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = (f", since {time.strftime('%H:%M:%S', time.localtime(since))}"
            if isinstance(since, (int, float)) else "")
    return (f"{holder.get('command') or 'another process'} (process {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}{when})")


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        holder = json.loads(text) if text else {}
    except ValueError:
        holder = {"command": "an unknown process"}
    return holder if isinstance(holder, dict) else {}


def _busy(folder: str, holder: dict) -> FolderBusy:
    return FolderBusy(f"{folder} is being written by {_describe(holder)}: wait for it to end or stop it "
                      f"(two writers would mix their files)")


def refuse_if_busy(folder: str) -> None:
    """Raise :class:`FolderBusy` when a live process holds ``folder``'s lock; change nothing. For
    checks that run before the lock is taken (reading a run to resume it)."""
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR)
    except OSError:  # no lock file (or an unreadable one): nobody writes it through this module
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(folder, _read_holder(fd)) from None
    finally:
        os.close(fd)  # and with it the lock this probe may have taken


class FolderLock:
    """Held while this process writes ``folder``; :meth:`release` (or the process's end) frees it."""

    def __init__(self, folder: str, command: str):
        self.folder, self.path = folder, os.path.join(folder, LOCK_FILE)
        self.created_folder = not os.path.isdir(folder)
        try:
            os.makedirs(folder, exist_ok=True)
            self.fd = self._acquire(command)
        except OSError as err:  # a place this process cannot write (a full disk, /proc, a file)
            if is_disk_full(err):
                raise disk_full(folder, "not even its lock file could be written") from None
            raise ConfigError(f"{folder} cannot be written ({err.strerror or err}): choose a folder "
                              f"you can write (runs_dir=<folder> for a run)") from None

    def _acquire(self, command: str) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise _busy(self.folder, holder) from None
            # a holder that released it may have deleted the file meanwhile: lock the file in place
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            print(f"note: {self.folder} was being written by {_describe(previous)}, which has "
                  f"stopped; taking it over", flush=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "since": round(time.time(), 1)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        return fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # while still locked: a waiting writer re-checks the inode
        os.close(self.fd)
        self.fd = None
        if self.created_folder:  # a refused or failed first start leaves no empty run folder
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)


_HELD: dict[str, FolderLock] = {}  # folders this process holds: taking one again is a no-op


@contextlib.contextmanager
def folder_lock(folder: str, command: str | None = None) -> Iterator[FolderLock]:
    """``with folder_lock(run_dir): ...`` writes ``run_dir`` as its only writer, or raises
    :class:`FolderBusy` (a ConfigError naming the other writer) before the block starts. Nested
    blocks of one process share the lock (the entry point takes it before torch loads, the trainer
    again for callers that skip the entry point)."""
    key = os.path.realpath(folder)
    if key in _HELD:
        yield _HELD[key]
        return
    lock = FolderLock(folder, command or os.path.basename(sys.argv[0]) or "python")
    _HELD[key] = lock
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()


def run_lock(run_dir: str, command: str) -> contextlib.AbstractContextManager:
    """:func:`folder_lock` for the processes that write a run together: under torchrun only rank 0
    takes it (RANK is set before the process group starts), and the other ranks trust it."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return folder_lock(run_dir, command)
