"""The score int8 keeps, by the protocol: every checkpoint and planner of
``benchmarks/results/scores.json`` that has int8 rows, its fp32 row beside each int8 mode (dynamic,
static, compiled) on the same episode seeds, and each int8 score as a share of fp32's.

    python benchmarks/int8_scores.py [--readme docs/int8.md]

Prints the table (and rewrites the ``int8_scores`` block of ``--readme``); with ``--json`` writes the
comparison there too.
"""
from __future__ import annotations

import argparse
import json
import math
import os

from readme_blocks import ROOT, markdown_table, replace_block

MODES = ("dynamic", "static", "compiled")
SCORES = os.path.join(ROOT, "benchmarks", "results", "scores.json")


def group_key(row: dict) -> tuple:
    """Rows that differ only in their int8 mode: same checkpoint, episode seeds and planner settings."""
    settings = {k: v for k, v in row["planner_settings"].items() if k != "quantize"}
    return row["checkpoint"], tuple(row["seeds"]), json.dumps(settings, sort_keys=True)


def kept(int8: dict, fp32: dict) -> tuple[float, float]:
    """int8's mean score over fp32's, and that ratio's standard error (independent episode sets)."""
    a, b = int8["score"], fp32["score"]
    ratio = a["mean"] / b["mean"]
    return ratio, abs(ratio) * math.hypot(a["sem"] / a["mean"], b["sem"] / b["mean"])


def comparisons(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, dict] = {}
    for row in rows:
        mode = row["planner_settings"].get("quantize", "none")
        groups.setdefault(group_key(row), {})[mode] = row
    found = []
    for (checkpoint, seeds, _), by_mode in groups.items():
        fp32 = by_mode.get("none")
        if fp32 is None or not any(m in by_mode for m in MODES):
            continue
        entry = {"env": fp32["env"], "checkpoint": checkpoint, "training": fp32.get("training", ""),
                 "actions": fp32["actions"],
                 "seeds": list(seeds), "fp32": fp32["score"], "failed": {"fp32": fp32["failed"]}}
        for mode in MODES:
            if mode in by_mode:
                ratio, sem = kept(by_mode[mode], fp32)
                entry[mode] = {**by_mode[mode]["score"], "kept": ratio, "kept_sem": sem}
                entry["failed"][mode] = by_mode[mode]["failed"]
        found.append(entry)
    return found


def cell(score: dict | None) -> str:
    if score is None:
        return "-"
    text = f"{score['mean']:.1f} ± {score['sem']:.1f}"
    if "kept" in score:
        text += f" ({100 * score['kept']:.0f} ± {100 * score['kept_sem']:.0f}%)"
    return text


def table(found: list[dict]) -> str:
    rows = [[e["env"], e["training"] or os.path.basename(os.path.dirname(e["checkpoint"].rstrip("/"))),
             e["actions"],
             f"{e['seeds'][0]}-{e['seeds'][-1]}", cell(e["fp32"])] + [cell(e.get(m)) for m in MODES]
            for e in found]
    columns = ["env", "run (training)", "planner", "seeds", "fp32>"] + [f"int8 {m} (of fp32)>" for m in MODES]
    return (markdown_table(columns, rows) + "\n\n(normalized score ± standard error over 25 episodes "
            "of 1,000 steps; in brackets the int8 score as a share of fp32's, ± its standard error)")


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", default=SCORES)
    parser.add_argument("--readme", default=None, help="the Markdown file whose int8_scores block to rewrite")
    parser.add_argument("--json", default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    with open(args.scores) as f:
        found = comparisons(json.load(f)["rows"])
    text = table(found)
    print(text)
    if args.readme:
        replace_block(args.readme, "int8_scores", text)
    if args.json:
        from trajectory.io import save_json
        save_json({"source": os.path.relpath(args.scores, ROOT), "comparisons": found}, args.json)
    return text


if __name__ == "__main__":
    main()
