"""The scores table: every normalized score docs/results.md quotes, from eval.py's reports.

Each row is one checkpoint, one way of choosing actions and one set of seeds, evaluated with the
score protocol (25 episodes of 1,000 steps). A row may be assembled from several reports of the
same checkpoint and settings over disjoint seed ranges (``<dir>/part*/report.json``, e.g. 25
episodes run as 5 processes of 5 on a machine with many cores); the parts' episodes are pooled.

    python benchmarks/scores.py add runs/s5-30m/eval_beam_1000 --training "30 min" \\
        --hardware "2 CPU cores" [--label "beam, TT settings"]
    python benchmarks/scores.py table [--readme docs/results.md]
    python benchmarks/scores.py rebuild [--rows benchmarks/score_rows.tsv] [--readme docs/results.md]

``add`` writes the row into benchmarks/results/scores.json (replacing a row with the same id);
``rebuild`` makes every row again from a list of ``folder<TAB>training<TAB>hardware`` lines (the
committed reports under benchmarks/results/evals; several folders joined by ``;`` are independent
training runs of one recipe, combined into one row by :func:`combine_rows`). Then the table is
printed; ``--readme`` names the Markdown file (docs/results.md) whose text between the ``<!--
scores:begin -->`` and ``<!-- scores:end -->`` markers it rewrites, and
benchmarks/results/scores.png shows the rows with their 95% intervals. ``python
benchmarks/headline.py`` condenses the same file into the README's headline table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # appended: the root first would shadow the stdlib profile module
    sys.path.append(ROOT)
from readme_blocks import link, markdown_table, replace_block  # noqa: E402  (the script's folder)

from trajectory.envs import env_family  # noqa: E402
from trajectory.io import save_json  # noqa: E402
from trajectory.score_stats import (  # noqa: E402
    COMPARABLE_EPISODES,
    COMPARABLE_STEPS,
    summarize,
    summarize_runs,
)

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SCORES = os.environ.get("SCORES_OUT", os.path.join(RESULTS, "scores.json"))  # tests redirect it
# TT's published normalized scores (Janner et al., 2021; the -v2 datasets), drawn beside each row
TT_SCORES = {"halfcheetah": 46.9, "hopper": 61.1, "walker2d": 79.0}
RUNS_SEPARATOR = ";"  # score_rows.tsv: folders of several training runs, combined into one row
PLANNER_KEYS = ("beam_width", "beam_steps", "sample_expand", "beam_context", "cdf_act", "k_act",
                "average_actions", "plan_every", "plan_value", "critic_std_weight")


def load_reports(folder: str) -> list[dict]:
    """The report of ``folder``, or the reports of its ``part*`` sub-folders."""
    single = os.path.join(folder, "report.json")
    paths = [single] if os.path.isfile(single) else sorted(glob.glob(os.path.join(folder, "part*",
                                                                                  "report.json")))
    if not paths:
        raise SystemExit(f"error: no report.json in {folder} or its part*/ folders")
    return [json.load(open(p)) for p in paths]


def action_choice(settings: dict, planner_info: dict | None = None) -> str:
    """How actions were chosen, in words, from a report's settings. (Rows made from reports of
    options since retired keep the labels they were written with.)"""
    if settings.get("planner", "beam") == "policy":
        return f"policy, {settings.get('policy_actions', 'greedy')}"
    extras = []
    if settings.get("cdf_act") != 0.6:  # None: the whole distribution, no filter
        extras.append(f"cdf_act {'off' if settings.get('cdf_act') is None else settings['cdf_act']}")
    if settings.get("average_actions"):
        extras.append(f"first actions averaged (temperature {settings['average_actions']:g})")
    if settings.get("critic_std_weight"):
        extras.append(f"Q: members' mean - {settings['critic_std_weight']:g} std")
    if settings.get("plan_every", 1) != 1:
        extras.append(f"a plan every {settings['plan_every']} steps")
    info = planner_info or {}
    trained = (f" (IQL expectile {info['expectile']:g}, {info['step'] // 1000}k steps)"
               if info.get("expectile") is not None and info.get("step") is not None else "")
    if settings.get("planner") == "critic":
        base = f"critic{trained}, best of {settings['beam_width']} policy actions"
    else:
        base = (f"beam {settings['beam_width']}x{settings['sample_expand']}, "
                f"{settings['beam_steps']} steps")
        if settings.get("plan_value") == "critic":
            base += f", valued by the critic{trained}"
    return ", ".join([base, *extras])


def search_depth(settings: dict) -> int:
    """Transitions the planner looks ahead: 0 for the model's own policy, 1 for one-step ranking by
    the critic, ``beam_steps`` for the beam search."""
    planner = settings.get("planner", "beam")
    return {"policy": 0, "critic": 1}.get(planner, settings.get("beam_steps", 1))


def merge(reports: list[dict]) -> dict:
    """Pool the episodes of reports that share checkpoint and settings (seeds may differ)."""
    first = reports[0]
    same = {k: v for k, v in first["settings"].items() if k not in ("seed", "n_episodes", "out",
                                                                     "threads", "device")}
    for other in reports[1:]:
        mismatch = [k for k, v in same.items() if other["settings"].get(k) != v]
        if mismatch or other["checkpoint"] != first["checkpoint"]:
            raise SystemExit(f"error: reports differ in {mismatch or ['checkpoint']}; a row pools "
                             f"episodes of one checkpoint and one setting")
    seeds, returns, scores, failures, lengths = [], [], [], [], []
    for report in reports:
        start = report["settings"]["seed"]
        seeds.extend(range(start, start + len(report["returns"])))
        for failure in report["failed_episodes"]:
            failures.append({**failure, "seed": start + failure["episode"]})
        returns.extend(report["returns"])
        scores.extend(report["normalized_scores"])
        lengths.extend(report["episode_lengths"])
    if len(set(seeds)) != len(seeds):
        raise SystemExit("error: the reports overlap in seeds")
    return {"seeds": seeds, "returns": returns, "normalized_scores": scores,
            "episode_lengths": lengths, "failed_episodes": failures}


def make_row(folder: str, training: str, hardware: str, label: str | None) -> dict:
    reports = load_reports(folder)
    pooled = merge(reports)
    first = reports[0]
    held_out = first.get("held_out") or {}
    seeds = sorted(pooled["seeds"])
    settings = first["settings"]
    env_id = settings.get("env_id") or "HalfCheetah-v5"  # reports before env_id was recorded
    choice = action_choice(settings, first.get("planner_info"))
    int8 = (first.get("quantization") or {}).get("mode", "none")
    if int8 != "none":  # a row of its own beside the same planner in fp32
        choice += f", int8 {int8}"
    row = {
        "id": f"{first['checkpoint']}|{choice}|{seeds[0]}-{seeds[-1]}",
        "checkpoint": first["checkpoint"], "env": env_family(env_id), "core": first["core"],
        "size": first.get("size"), "training": training, "hardware": hardware,
        "tokens": (first.get("training") or {}).get("tokens"),
        "advantage_beta": (first.get("training") or {}).get("advantage_beta") or 0.0,
        "held_out_ce": {k[3:]: v for k, v in held_out.items() if k.startswith("ce_")} or None,
        "held_out_value_corr": held_out.get("value_corr"),
        "actions": label or choice,
        "planner_settings": {**{k: settings.get(k) for k in ("planner", "policy_actions", *PLANNER_KEYS)},
                             **({"quantize": int8} if int8 != "none" else {})},
        "search_depth": search_depth(settings),
        "seeds": [seeds[0], seeds[-1]], "episodes": len(seeds),
        "max_episode_steps": settings["max_episode_steps"],
        "score": summarize(pooled["normalized_scores"], seed=seeds[0]),
        "return_mean": float(np.mean(pooled["returns"])),
        "failed": len(pooled["failed_episodes"]),
        "failed_episodes": pooled["failed_episodes"],
        "ms_per_env_step": float(np.mean([r["ms_per_env_step"] for r in reports])),
        "eval_device": settings.get("device"),
        "returns": pooled["returns"],
    }
    # an episode the environment ended (a fall) is a full episode; one cut by a short time limit is not
    row["protocol"] = (row["episodes"] >= COMPARABLE_EPISODES
                       and settings["max_episode_steps"] >= COMPARABLE_STEPS)
    return row


def load_rows() -> list[dict]:
    return json.load(open(SCORES))["rows"] if os.path.isfile(SCORES) else []


def save_rows(rows: list[dict]) -> None:
    save_json({"rows": rows}, SCORES)


def runs_checkpoint(checkpoints: list[str]) -> str:
    """One name for the checkpoints of several runs of a recipe: ``runs/x-seed1/checkpoint`` and
    ``runs/x-seed2/checkpoint`` give ``runs/x-seed{1,2}/checkpoint``."""
    folders = [os.path.dirname(os.path.normpath(c)) for c in checkpoints]
    prefix = os.path.commonprefix(folders)
    tails = [f[len(prefix):] for f in folders]
    return os.path.join(prefix + "{" + ",".join(tails) + "}", os.path.basename(checkpoints[0]))


def combine_rows(per_run: list[dict]) -> dict:
    """The row of several independent training runs of one recipe, acting the same way on the same
    seeds: the mean over runs with its standard error over runs (``summarize_runs``), the runs'
    episodes pooled for the failure counts, ``training_seeds`` = the number of runs."""
    first = per_run[0]
    for key in ("env", "core", "size", "actions", "planner_settings", "seeds", "max_episode_steps",
                "training", "hardware", "advantage_beta"):
        if any(r.get(key) != first.get(key) for r in per_run[1:]):
            raise SystemExit(f"error: the runs' rows differ in {key}; a combined row needs one recipe "
                             f"acting one way on one set of seeds")
    if len({r["checkpoint"] for r in per_run}) != len(per_run):
        raise SystemExit("error: a checkpoint appears twice; the runs must be independent")
    checkpoint = runs_checkpoint([r["checkpoint"] for r in per_run])
    n = len(per_run)

    def mean_of(key: str) -> float | None:
        values = [r[key] for r in per_run]
        return None if any(v is None for v in values) else float(np.mean(values))

    ces = [r.get("held_out_ce") for r in per_run]
    row = {
        **{k: first[k] for k in ("env", "core", "size", "hardware", "actions", "planner_settings",
                                 "search_depth", "seeds", "max_episode_steps", "eval_device")},
        "id": f"{checkpoint}|{first['actions']}|{first['seeds'][0]}-{first['seeds'][1]}",
        "checkpoint": checkpoint, "training": f"{first['training']}; mean of {n} training runs",
        "training_seeds": n, "run_checkpoints": [r["checkpoint"] for r in per_run],
        "tokens": mean_of("tokens"), "advantage_beta": first.get("advantage_beta", 0.0),
        "held_out_ce": ({k: float(np.mean([ce[k] for ce in ces])) for k in ces[0]}
                        if all(ces) else None),
        "held_out_value_corr": mean_of("held_out_value_corr"),
        "episodes": sum(r["episodes"] for r in per_run),
        "score": summarize_runs([r["score"] for r in per_run]),
        "return_mean": mean_of("return_mean"),
        "failed": sum(r["failed"] for r in per_run),
        "failed_episodes": [{**f, "run": i} for i, r in enumerate(per_run) for f in r["failed_episodes"]],
        "ms_per_env_step": mean_of("ms_per_env_step"),
        "returns": [x for r in per_run for x in r["returns"]],
        "protocol": all(r["protocol"] for r in per_run),
    }
    return row


def table(rows: list[dict]) -> str:
    """The protocol rows (25 full episodes or more); cut-short evaluations stay in the JSON only."""
    columns = ["data", "core", "size", "training", "tokens>", "held-out CE obs / act / rew / val", "actions",
               "normalized (± s.e.m.)>", "95% CI", "failed>", "seeds"]
    lines = []
    for r in rows:
        if not r["protocol"]:
            continue
        ce = r.get("held_out_ce")
        s = r["score"]
        lines.append([f"{r['env']}-medium", r["core"], r.get("size") or "",
                      f"{r['training']}, {r['hardware']}",
                      f"{r['tokens'] / 1e6:.0f}M" if r.get("tokens") else "n/a",
                      " / ".join(f"{ce[k]:.2f}" for k in ("obs", "act", "reward", "value")) if ce
                      else "n/a", r["actions"], f"**{s['mean']:.1f}** ± {s['sem']:.1f}",
                      f"{s['ci95'][0]:.1f}-{s['ci95'][1]:.1f}", f"{r['failed']} of {r['episodes']}",
                      f"{r['seeds'][0]}-{r['seeds'][1]}"])
    return markdown_table(columns, lines)


def same_run(a: dict, b: dict) -> bool:
    """One checkpoint, evaluated on two machines: the run's folder name and its training agree."""
    def run_name(row: dict) -> str:
        return os.path.basename(os.path.dirname(os.path.normpath(row["checkpoint"])))
    return (run_name(a), a["core"], a["tokens"]) == (run_name(b), b["core"], b["tokens"])


def gains(rows: list[dict]) -> str:
    """Each planner row against the same checkpoint's policy rows on the same seeds (the same
    weights): its greedy policy, and its median policy where one was measured."""
    def policy(r: dict, actions: str) -> dict | None:
        match = [p for p in rows if p["planner_settings"]["planner"] == "policy"
                 and p["planner_settings"].get("policy_actions", "greedy") == actions
                 and same_run(p, r) and p["seeds"] == r["seeds"]
                 and p["planner_settings"].get("weights") == r["planner_settings"].get("weights")]
        return match[0] if match else None

    def gain(r: dict, p: dict | None) -> str:
        if p is None:
            return "n/a"
        diff = r["score"]["mean"] - p["score"]["mean"]
        spread = (r["score"]["sem"] ** 2 + p["score"]["sem"] ** 2) ** 0.5
        return f"**{diff:+.1f}** ± {spread:.1f}"

    lines = []
    for r in rows:
        if r["planner_settings"]["planner"] == "policy" or not r["protocol"]:
            continue
        greedy, median = policy(r, "greedy"), policy(r, "median")
        if greedy is None and median is None:
            continue
        failed = " / ".join(str(x["failed"]) for x in (r, greedy, median) if x is not None)
        lines.append([f"{r['env']}-medium", r["core"], r["training"], r["actions"],
                      f"{r['seeds'][0]}-{r['seeds'][1]}", gain(r, greedy), gain(r, median),
                      f"{failed} of {r['episodes']}"])
    return markdown_table(["data", "core", "training", "planner", "seeds", "planner − greedy policy>",
                           "planner − median policy>", "failed: planner / policies"], lines)


PLANNER_COLORS = {"policy": "tab:orange", "critic": "tab:green"}  # other planners: blue


def plot(rows: list[dict], path: str) -> None:
    rows = [r for r in rows if r["protocol"]]  # what the table shows
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        s = r["score"]
        color = PLANNER_COLORS.get(r["planner_settings"]["planner"], "tab:blue")
        ax.errorbar(s["mean"], i, xerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]],
                    fmt="o", color=color)
        ax.plot(TT_SCORES[r["env"]], i, "|", color="gray", markersize=10)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['env']} {r['core']} {r['training']}: "
                        f"{r['actions'][:40]} [{r['seeds'][0]}]" for r in rows], fontsize=7)
    ax.set_xlabel("normalized score (95% bootstrap CI); blue: beam search, green: "
                  "critic-ranked, orange: policy; gray tick: TT's published score")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add (or replace) a row from an eval folder")
    add.add_argument("folder")
    add.add_argument("--training", required=True, help="budget, e.g. '30 min' or '600M tokens'")
    add.add_argument("--hardware", required=True, help="where it trained, e.g. '2 CPU cores'")
    add.add_argument("--label", default=None, help="how actions were chosen (default: settings)")
    add.add_argument("--size", default=None, help="d_model x layers (default: from the checkpoint)")
    show = sub.add_parser("table", help="print the table (and rewrite the block of --readme)")
    rebuild = sub.add_parser("rebuild", help="make every row again from a list of folders")
    rebuild.add_argument("--rows", default=os.path.join(ROOT, "benchmarks", "score_rows.tsv"))
    for p in (add, show, rebuild):
        p.add_argument("--readme", default=None,
                       help="the Markdown file whose 'scores' block to rewrite (docs/results.md)")
    args = parser.parse_args(argv)
    rows = load_rows()
    if args.command == "add":
        row = make_row(args.folder, args.training, args.hardware, args.label)
        if args.size:
            row["size"] = args.size
        rows = [r for r in rows if r["id"] != row["id"]] + [row]
        save_rows(rows)
    if args.command == "rebuild":
        rows = []
        for line in open(args.rows):
            if line.strip() and not line.startswith("#"):
                folders, training, hardware = line.rstrip("\n").split("\t")
                per_run = [make_row(os.path.join(ROOT, f), training, hardware, None)
                           for f in folders.split(RUNS_SEPARATOR)]
                rows.append(per_run[0] if len(per_run) == 1 else combine_rows(per_run))
        save_rows(rows)
    text = (table(rows) + "\n\nWhat search adds: each planner row against the same checkpoint's "
            "policy on the same seeds (± the two standard errors combined):\n\n" + gains(rows))
    print(text)
    chart = os.path.join(os.path.dirname(SCORES), "scores.png")
    plot(rows, chart)
    if args.readme:
        replace_block(args.readme, "scores", text + f"\n\n![scores]({link(args.readme, chart)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
