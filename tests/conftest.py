"""Test-suite set-up.

``python -m pytest`` from the repository root puts the root first on ``sys.path``, where
``profile.py`` would shadow the standard library's ``profile`` (imported by cProfile and
torch._dynamo). Importing the package first moves the root behind the standard library.
"""
import os

import trajectory  # noqa: F401  (must precede any torch import)

os.environ.setdefault("MUJOCO_GL", "egl")
