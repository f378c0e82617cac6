"""Shared checks of the fault-injection tables (tests/test_faults_*.py): a command line run as a user
runs it, and what a refusal must look like: exit status 2, one line (two where valid choices are
listed) that names the problem, no traceback, and no file left half-written."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args: list[str], cwd: str | os.PathLike = ROOT, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <args>`` (a script of the repository root, or ``-m module``) as a subprocess."""
    args = [os.path.join(ROOT, a) if a.endswith(".py") and not os.path.isabs(a) else a for a in args]
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def error_lines(stderr: str) -> list[str]:
    """What the user reads: stderr without progress bars, warnings' source lines and argparse usage."""
    return [line for line in stderr.strip().splitlines()
            if line.strip() and not line.startswith(("usage:", " ")) and "\r" not in line
            and "it/s]" not in line and "step/s]" not in line]


def assert_refused(result: subprocess.CompletedProcess, expected: str, max_lines: int = 2) -> None:
    """Exit 2, ``expected`` in the message, no traceback, at most ``max_lines`` lines."""
    shown = f"exit {result.returncode}\nstdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, shown
    assert expected in result.stderr, shown
    assert len(error_lines(result.stderr)) <= max_lines, shown


def refused_before_torch(args: list[str], cwd: str | os.PathLike = ROOT) -> tuple[int, bool, str]:
    """Run the command line in a probe that reports (exit status, whether torch was imported by then,
    stderr): checks that need no torch answer before its seconds of import."""
    module = args[0] == "-m"
    target = args[1] if module else (args[0] if os.path.isabs(args[0]) else os.path.join(ROOT, args[0]))
    launch = (f"runpy.run_module({target!r}, run_name='__main__', alter_sys=True)" if module
              else f"runpy.run_path({target!r}, run_name='__main__')")
    argv = [target, *args[2 if module else 1:]]
    probe = (f"import runpy, sys\nsys.path.insert(0, {ROOT!r}) if {module!r} else None\n"
             f"sys.argv = {argv!r}\ncode = 0\ntry:\n    {launch}\nexcept SystemExit as e:\n"
             f"    code = e.code\nprint('exit', code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    last = (result.stdout.strip().splitlines() or ["exit ? ?"])[-1].split()
    return (int(last[1]) if last[1].lstrip("-").isdigit() else -1), last[2] == "True", result.stderr


def half_written(folder: str | os.PathLike) -> list[str]:
    """Temporary files an atomic write leaves only when it was cut short (``.<name>.*.tmp``,
    ``*.tmp-<pid>`` folders), anywhere under ``folder``."""
    found = []
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if name.endswith(".tmp") or ".tmp-" in name:
                found.append(os.path.join(parent, name))
    return found
