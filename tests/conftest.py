"""Test-suite set-up.

The repository root holds ``profile.py``, which shadows the standard library's ``profile`` module
(imported by ``cProfile``, and through it by torch.compile) whenever the root comes first on
``sys.path`` (``python -m pytest`` run from the root does that). Move the root to the end so the
standard library wins while the package stays importable.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_front = [p for p in sys.path if os.path.abspath(p or os.curdir) == _ROOT]
if _front:
    sys.path[:] = [p for p in sys.path if p not in _front] + [_ROOT]
_loaded = sys.modules.get("profile")
if _loaded is not None and os.path.dirname(os.path.abspath(getattr(_loaded, "__file__", "") or "")) == _ROOT:
    del sys.modules["profile"]

os.environ.setdefault("MUJOCO_GL", "egl")
