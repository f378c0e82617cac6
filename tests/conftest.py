"""Test-suite set-up.

``python -m pytest`` from the repository root puts the root first on ``sys.path``, where
``profile.py`` would shadow the standard library's ``profile`` (imported by cProfile and
torch._dynamo). Importing the package first moves the root behind the standard library.
"""
import os

# Tests use tiny tensors: one thread avoids OpenMP start-up and spin costs that grow sharply when the
# two cores are shared, and subprocesses (CLI tests, torchrun workers) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import trajectory  # noqa: E402,F401  (must precede any torch import)

os.environ.setdefault("MUJOCO_GL", "egl")
