"""The local reproductions of D4RL's medium datasets: behaviour policy and dataset, per environment.

    python benchmarks/reproductions.py [--names hopper-medium,walker2d-medium] [--cache-dir data] \
        [--readme docs/data.md]

For each reproduction it reads the committed policy's card
(``trajectory/behaviour/policies/<env>_medium_policy.json``, written by
``python -m trajectory.behaviour.card``) and the dataset that ``data.source=<name>`` loads (generated
on first use, which takes a few minutes), and records: the policy's training steps and its
sampled-action return, then the dataset's episodes, how many ended by a fall (a true terminal),
their mean length, the behaviour return and its D4RL-normalized score. Results go to
``benchmarks/results/reproductions.json`` (entries of other names are kept) and, with ``--readme``,
to the block ``reproductions`` of that Markdown file (docs/data.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from readme_blocks import load_results, markdown_table, publish  # noqa: E402

from trajectory.behaviour.reproductions import REPRODUCTIONS  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "reproductions.json")


def measure(name: str, cache_dir: str) -> dict:
    from trajectory.data.sources import load_transitions

    repro = REPRODUCTIONS[name]
    card = json.load(open(os.path.splitext(repro.policy)[0] + ".json"))
    start = time.time()
    transitions = load_transitions(name, cache_dir=cache_dir)
    _, lengths = transitions.episode_bounds()
    ends = np.cumsum(lengths) - 1
    stats = transitions.return_stats()
    return {
        "env_id": repro.env_id, "dataset_id": repro.dataset_id,
        "policy": {"train_steps": card["training"]["train_steps"],
                   "sampled_return_mean": card["stochastic"]["mean"],
                   "sampled_return_std": card["stochastic"]["std"],
                   "sampled_normalized": card["stochastic"]["normalized_mean"],
                   "card_episodes": card["episodes"]},
        "steps": len(transitions), "episodes": len(lengths),
        "falls": int(transitions.terminals[ends].sum()),
        "mean_length": float(lengths.mean()),
        "return_mean": stats["return_mean"], "return_std": stats["return_std"],
        "normalized_mean": stats["normalized_mean"],
        "load_seconds": round(time.time() - start, 1),
    }


def table(results: dict) -> str:
    rows = []
    for name, r in sorted(results.items()):
        p = r["policy"]
        rows.append([f"`{name}`", r["env_id"], f"{p['train_steps']:,}",
                     f"{p['sampled_return_mean']:,.0f} ± {p['sampled_return_std']:,.0f} "
                     f"({p['card_episodes']} ep.)",
                     f"{r['steps']:,}", f"{r['episodes']:,}", f"{r['falls']:,}", f"{r['mean_length']:.0f}",
                     f"{r['return_mean']:,.0f} ± {r['return_std']:,.0f}", f"{r['normalized_mean']:.1f}"])
    return markdown_table(["data.source", "env", "policy's SAC steps>", "policy return, sampled>",
                           "steps>", "episodes>", "falls>", "mean length>", "behaviour return>",
                           "normalized>"], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", default=",".join(sorted(REPRODUCTIONS)),
                        help="comma-separated reproductions (default: all)")
    parser.add_argument("--cache-dir", default="data")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'reproductions' block to rewrite (docs/data.md)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    unknown = sorted(set(names) - set(REPRODUCTIONS))
    if unknown:
        parser.error(f"unknown reproduction(s) {unknown}; choose from {sorted(REPRODUCTIONS)}")
    results = load_results(RESULTS)
    for name in names:
        results[name] = measure(name, args.cache_dir)
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    publish(results, RESULTS, args.readme, "reproductions", table)


if __name__ == "__main__":
    main()
