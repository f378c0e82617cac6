"""What the result scripts share: their JSON results file, Markdown tables, and the block each
rewrites in a Markdown file (README.md or a page under docs/: the text between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``), so that tables quoted there always come from a
results file. ``--readme <file>`` names that file in every script."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # appended: the root first would shadow the stdlib profile module
    sys.path.append(ROOT)
from trajectory.io import save_json, save_text  # noqa: E402


def load_results(path: str) -> dict:
    """The results a script saved earlier (entries of other runs are kept beside new ones)."""
    return json.load(open(path)) if os.path.isfile(path) else {}


def publish(results: dict, path: str, readme: str | None, block: str,
            table: Callable[[dict], str]) -> None:
    """Save ``results`` to ``path`` and, with ``readme``, rewrite its ``block`` with the table."""
    save_json(results, path)
    if readme:
        replace_block(readme, block, table(results))


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; a column title ending in '>' is right-aligned (the '>' is dropped)."""
    titles = [c.rstrip(">") for c in columns]
    rules = ["---:" if c.endswith(">") else "---" for c in columns]
    lines = [titles, rules, *[[str(cell) for cell in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def link(readme: str, path: str) -> str:
    """``path`` (absolute, or relative to the repository root) as a Markdown link target relative to
    the folder of ``readme``, the file the link is written into."""
    target = path if os.path.isabs(path) else os.path.join(ROOT, path)
    return os.path.relpath(target, os.path.dirname(os.path.abspath(readme))).replace(os.sep, "/")


def replace_block(readme: str, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = open(readme).read()
    if begin not in content or end not in content:
        raise SystemExit(f"error: {readme} has no {begin} ... {end} markers")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    save_text(f"{head}{begin}\n{text}\n{end}{tail}", readme)
