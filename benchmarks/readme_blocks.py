"""Rewrite a generated block of the README: the text between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``, so that tables quoted there always come from a results file."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # appended: the root first would shadow the stdlib profile module
    sys.path.append(ROOT)
from trajectory.io import save_text  # noqa: E402


def replace_block(readme: str, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = open(readme).read()
    if begin not in content or end not in content:
        raise SystemExit(f"error: {readme} has no {begin} ... {end} markers")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    save_text(f"{head}{begin}\n{text}\n{end}{tail}", readme)
