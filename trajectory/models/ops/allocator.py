"""Keep freed memory in the process for reuse instead of returning it to the kernel.

Beam planning allocates and frees the same large state buffers (tens of MB) many times per
environment step. glibc serves blocks that large with fresh ``mmap`` pages and unmaps them on free,
so every reorder pays the kernel for zeroed pages on first touch (a large share of GPT's planning
time in profiles on 2 cores). Raising glibc's mmap and trim thresholds makes freed buffers come
back from the heap (the effect of PyTorch's CPU tuning advice to run under a caching allocator such
as jemalloc, without a preload). Elsewhere (no glibc) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h
_done = False


def reuse_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Serve allocations below ``limit_bytes`` from the heap and keep freed memory mapped. Returns
    whether the setting took effect (once per process; later calls only report)."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, limit_bytes))
    _done = _done and bool(mallopt(_M_TRIM_THRESHOLD, 2 * limit_bytes))
    return _done
