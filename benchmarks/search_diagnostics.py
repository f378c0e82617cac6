"""Why search loses: what the planner predicted against what happened, from eval.py's traces.

For each eval folder (``trace.npz``, or ``part*/trace.npz`` pooled), over every step of every
episode: the model's predicted reward for the step it chose against the reward the env returned
(bias = mean over-estimation, correlation), the same split into the episodes that failed and those
that did not, and the model's log-likelihood of the observations that followed (surprise). A
planner that picks the plans the model over-estimates shows a positive bias that the no-search
policy on the same checkpoint does not.

    python benchmarks/search_diagnostics.py beam=runs/x/eval_beam policy=runs/x/eval_policy \\
        [--out benchmarks/results/search_diagnostics.json] [--readme docs/results.md]
    python benchmarks/search_diagnostics.py --readme docs/results.md    # the saved results again
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # appended: the root first would shadow the stdlib profile module
    sys.path.append(ROOT)
from readme_blocks import load_results, markdown_table, publish  # noqa: E402  (the script's folder)


def load_traces(folder: str) -> dict[str, np.ndarray]:
    single = os.path.join(folder, "trace.npz")
    paths = [single] if os.path.isfile(single) else sorted(glob.glob(os.path.join(folder, "part*",
                                                                                  "trace.npz")))
    if not paths:
        raise SystemExit(f"error: no trace.npz in {folder} or its part*/ folders")
    parts = [dict(np.load(p)) for p in paths]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def describe(trace: dict[str, np.ndarray]) -> dict:
    predicted, realised = trace["predicted_reward"], trace["reward"]
    failed = trace["first_flip_step"] >= 0

    def stats(rows: np.ndarray) -> dict | None:
        if not rows.any():
            return None
        p, r = predicted[rows].ravel(), realised[rows].ravel()
        ok = np.isfinite(p) & np.isfinite(r)
        p, r = p[ok], r[ok]
        surprise = trace["observed_log_likelihood"][rows]
        return {"episodes": int(rows.sum()), "steps": int(ok.sum()),
                "predicted_reward": float(p.mean()), "realised_reward": float(r.mean()),
                "over_estimation": float((p - r).mean()),
                "correlation": float(np.corrcoef(p, r)[0, 1]) if p.std() > 0 and r.std() > 0 else 0.0,
                "observation_log_likelihood": float(np.nanmean(surprise))}

    out = {"all": stats(np.ones(len(failed), dtype=bool)), "failed": stats(failed),
           "not_failed": stats(~failed)}
    if failed.any():  # the 20 steps before each failure
        before = []
        for i in np.flatnonzero(failed):
            end = int(trace["first_flip_step"][i])
            steps = slice(max(0, end - 20), max(1, end))
            before.append((predicted[i, steps] - realised[i, steps]).mean())
        out["over_estimation_before_failure"] = float(np.mean(before))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", help="label=eval_folder (none: reprint saved results)")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose search_diagnostics block to rewrite (docs/results.md)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "search_diagnostics.json"))
    args = parser.parse_args(argv)
    results = {}
    for item in args.folders:
        label, folder = item.split("=", 1)
        results[label] = {"folder": folder, **describe(load_traces(folder))}
        a = results[label]["all"]
        print(f"{label:>24}: predicted reward {a['predicted_reward']:.2f}, realised "
              f"{a['realised_reward']:.2f}, over-estimation {a['over_estimation']:+.2f}, "
              f"corr {a['correlation']:.2f}, failed episodes "
              f"{(results[label]['failed'] or {}).get('episodes', 0)}")
    publish({**load_results(args.out), **results}, args.out, args.readme, "search_diagnostics", table)
    return 0


def table(results: dict) -> str:
    columns = ["evaluation", "predicted reward / step>", "realised>", "over-estimation: all episodes>",
               "failed episodes>", "others>", "log p(observation) / token: failed>", "others>"]

    def fmt(d: dict, key: str, signed: bool = False) -> str:
        return "n/a" if key not in d else (f"{d[key]:+.2f}" if signed else f"{d[key]:.2f}")
    rows = []
    for label, r in results.items():
        failed, others = r.get("failed") or {}, r.get("not_failed") or {}
        rows.append([label, fmt(r["all"], "predicted_reward"), fmt(r["all"], "realised_reward"),
                     fmt(r["all"], "over_estimation", True),
                     f"{fmt(failed, 'over_estimation', True)} ({failed.get('episodes', 0)})",
                     fmt(others, "over_estimation", True), fmt(failed, "observation_log_likelihood"),
                     fmt(others, "observation_log_likelihood")])
    return markdown_table(columns, rows)


if __name__ == "__main__":
    sys.exit(main())
