"""Offline RL by sequence modelling and beam-search planning."""
import os as _os
import sys as _sys


def _standard_library_first() -> None:
    """Keep the repository root behind the standard library on ``sys.path``.

    The root holds ``profile.py`` (the profiling CLI), which shares its name with the standard
    library's ``profile``, imported by ``cProfile`` and through it by torch.compile / torch._dynamo.
    Running any root script (``python train.py``) or ``python -m pytest`` from the root puts the root
    first on ``sys.path``, where it would shadow the standard module. The package is imported before
    torch by every entry point, so moving the root to the end here protects all of them.
    """
    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    front = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) == root]
    if front:
        _sys.path[:] = [p for p in _sys.path if p not in front] + [root]
    shadow = _sys.modules.get("profile")
    if shadow is not None and _os.path.dirname(_os.path.abspath(getattr(shadow, "__file__", None)
                                                                or _os.devnull)) == root:
        del _sys.modules["profile"]


_standard_library_first()
