"""Named regions for the profiler: which op group a stretch of model or planner code belongs to.

``planners.profiling`` turns these names into the op-group breakdown of its reports. Scopes are
off unless a profile is running, so training and planning (and torch.compile) never see them.
"""
from __future__ import annotations

import contextlib

PREFIX = "group::"
_enabled = False


def op_group(name: str):
    """``with op_group("attention"): ...`` labels the ops inside for the profiler."""
    if not _enabled:
        return contextlib.nullcontext()
    from torch.profiler import record_function
    return record_function(PREFIX + name)


@contextlib.contextmanager
def scopes_enabled():
    global _enabled
    previous, _enabled = _enabled, True
    try:
        yield
    finally:
        _enabled = previous
