"""Whether this process's torch threads would compete with other work for the CPU cores.

On 2 cores, a planner with torch's default of one thread per core beside another busy process ran
about 40 times slower per step than alone: threads that wait for each other's cores spin. The fix
is fewer threads, which only the user can choose knowing what else runs; this says when and how.
"""
from __future__ import annotations

import os
import time

import torch


def runnable_elsewhere(samples: int = 10, interval: float = 0.01) -> float | None:
    """Tasks other than this one running or waiting for a core now, averaged over a few samples
    (Linux: /proc/loadavg's count of runnable tasks, less this process reading it); None where the
    count is not available."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - 1))
        time.sleep(interval)
    return sum(counts) / len(counts)


def thread_advice(requested: int = 0) -> str | None:
    """A one-line note when other work takes the cores this process's threads need (``requested``:
    the configured thread count, 0 for torch's default); None otherwise. Busy means busy both over
    the last minute and now: the 1-minute load average alone still counts work that has just ended
    (``make demo``'s own training, before it evaluates)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None
    now = runnable_elsewhere()
    if now is not None:
        load = min(load, now)
    threads = requested or torch.get_num_threads()
    if load < 0.5 or load + threads <= cores + 0.5:
        return None
    spare = max(1, cores - round(load))
    busy = (f"note: the CPU is busy (load {load:.1f} on {cores} cores) and this process runs {threads} "
            f"torch thread{'s' if threads > 1 else ''}")
    if threads <= spare:  # fewer threads would not help: only the other work's end will
        return f"{busy}; it may crawl until the other work ends"
    return f"{busy}; if it crawls, set threads={spare} or stop the other work"
