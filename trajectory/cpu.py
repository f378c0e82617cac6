"""Whether this process's torch threads would compete with other work for the CPU cores.

On 2 cores, a planner with torch's default of one thread per core beside another busy process ran
about 40 times slower per step than alone: threads that wait for each other's cores spin. The fix
is fewer threads, which only the user can choose knowing what else runs; this says when and how.
"""
from __future__ import annotations

import os

import torch


def thread_advice(requested: int = 0) -> str | None:
    """A one-line note when the 1-minute load average plus this process's threads exceed the cores
    (``requested``: the configured thread count, 0 for torch's default); None otherwise."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None
    threads = requested or torch.get_num_threads()
    if load < 0.5 or load + threads <= cores + 0.5:
        return None
    spare = max(1, cores - round(load))
    return (f"note: the CPU is busy (load {load:.1f} on {cores} cores) and this process runs {threads} "
            f"torch threads; if it crawls, set threads={spare} or stop the other work")
