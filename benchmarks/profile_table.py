"""The profile table of docs/profiling.md, from a ``profile.py`` report (``profile.json``): per core and
precision, ms per env step and per decoded token (one-token step of the planner), the share of beam
reordering, and the three op groups that take the most time.

    python profile.py --config=configs/eval_base.yaml compare=gpt,hyena,retnet,s5 n_episodes=5 \\
        threads=2 out=benchmarks/results/profile_tt
    python benchmarks/profile_table.py benchmarks/results/profile_tt/profile.json --readme docs/profiling.md
"""
from __future__ import annotations

import argparse
import json

from readme_blocks import markdown_table, replace_block

from planners.profiling import planner_settings


def table(report: dict) -> str:
    rows = []
    for r in report["results"]:
        groups = r["groups_ms_per_env_step"]
        total = sum(groups.values())
        reorder = groups.get("beam reordering")  # reports before the group existed lack it
        top = sorted(((ms, name) for name, ms in groups.items() if name != "beam reordering"),
                     reverse=True)[:3]
        where = ", ".join(f"{name} {100 * ms / total:.0f}%" for ms, name in top)
        ceiling = r["achieved_flop_s"] / report["machine"]["matmul_flop_s"]
        rows.append([r["core"], r["precision"], f"{r['ms_per_env_step']:,.0f}",
                     f"{r['ms_per_decoded_token']:.1f}",
                     "n/a" if reorder is None else f"{100 * reorder / total:.1f}%", where,
                     f"{100 * ceiling:.1f}%"])
    s = report["settings"]
    note = (f"({planner_settings(s)}; {report['machine'].get('threads', '?')} threads; "
            f"{report['weights_note']})")
    note = note[:-1] + f"; fp32 matmul ceiling {report['machine']['matmul_flop_s'] / 1e9:.0f} GFLOP/s)"
    columns = ["core", "precision", "ms / env step>", "ms / decoded token>", "beam reordering>",
               "the three largest other op groups (% of profiled time)", "of the matmul ceiling>"]
    return markdown_table(columns, rows) + "\n\n" + note


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="a profile.json written by profile.py")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose --block to rewrite (docs/profiling.md)")
    parser.add_argument("--block", default="profile_tt")
    args = parser.parse_args(argv)
    with open(args.report) as f:
        text = table(json.load(f))
    print(text)
    if args.readme:
        replace_block(args.readme, args.block, text)
    return text


if __name__ == "__main__":
    main()
