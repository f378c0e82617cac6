"""The headline table: per environment, the default planner's score measured on the report seeds, the
same run's own policy, the dataset's behaviour and the published D4RL figures, with a bar chart.

    python benchmarks/headline.py [--readme README.md]

Reads benchmarks/results/scores.json (``benchmarks/scores.py``) and
benchmarks/results/reproductions.json (``benchmarks/reproductions.py``); prints the table, draws
benchmarks/results/headline.png (one panel per environment) and, with ``--readme``, rewrites the
``headline`` block of that Markdown file.

Which rows, per environment (the rule ``pick`` codes):

* the planner row: among the rows of the score protocol on the report seeds 1000-1024 that use only
  settings the planners still offer (raw weights, no retired option), the rows that plan as the
  environment's S5 CPU recipe says (``eval.py planner=recipe``: the ``planning`` block of
  ``configs/cpu/<env>_medium_s5.yaml``, which may be the model's own policy) if there are any, else
  the rows of the critic planner with its default ranking, else every planner row; of those, the
  rows of the default recipe's core (S5, what ``make demo`` trains) where there are any; of those,
  the rows that average the most independent training runs (``training_seeds``); the newest row
  wins (never the best: picking the highest of several measurements would flatter the table);
* the policy row: the same run's model-own policy on the same seeds, read at the median (the
  policy's default), or greedily where no median row exists;
* the behaviour: the mean normalized return of the dataset's own episodes;
* the runs: how many independent training runs the planner's score averages (``training_seeds``
  of its row; a row without it is one run's 25 episodes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from readme_blocks import ROOT, link, markdown_table, replace_block  # noqa: E402
from scores import PLANNER_KEYS, same_run  # noqa: E402

from trajectory.score_stats import COMPARABLE_EPISODES, COMPARABLE_STEPS  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
ENVS = ("halfcheetah", "hopper", "walker2d")
REPORT_SEEDS = [1000, 1024]
# Published normalized scores on D4RL's <env>-medium-v2 datasets, as the papers report them:
# the Trajectory Transformer, Janner et al., 2021 (NeurIPS 2021), and implicit Q-learning (IQL),
# Kostrikov et al., 2021 (ICLR 2022).
PUBLISHED = {"TT": {"halfcheetah": 46.9, "hopper": 61.1, "walker2d": 79.0},
             "IQL": {"halfcheetah": 47.4, "hopper": 66.3, "walker2d": 78.3}}
# Planner settings measured once and removed since: a row that used one is an ablation, not a
# setting anyone can choose now.
DEFAULT_CORE = "s5"  # the CPU recipe's core (configs/cpu/*_s5.yaml, make demo)
RETIRED = ("likelihood_weight", "support_penalty", "obs_median", "act_window", "anchor_median")


def planner(row: dict) -> str:
    return row["planner_settings"]["planner"]


def weights_used(row: dict) -> str:
    """The weights the evaluation used (the row id names them; the settings hold what was asked)."""
    return "ema" if row["id"].split("|")[1].endswith("(ema weights)") else "raw"


def current(row: dict) -> bool:
    """A row whose settings the planners still offer."""
    s = row["planner_settings"]
    return (planner(row) != "lookahead" and weights_used(row) == "raw"
            and s.get("percentile", "mean") == "mean"
            and not any(s.get(key) not in (None, False, 0, 0.0) for key in RETIRED))


def default_critic(row: dict) -> bool:
    """A row of the default planner as configs/eval_base.yaml sets it: the critic planner ranking by
    the minimum over its Q members."""
    return planner(row) == "critic" and not row["planner_settings"].get("critic_std_weight")


def recipe_settings(env: str) -> dict | None:
    """How the environment's S5 CPU recipe plans (``planner=recipe`` resolved on
    configs/eval_base.yaml), or None without a recipe."""
    from planners.recipe import with_planning
    from trajectory.config import EvalConfig, TrainRunConfig
    from trajectory.configutil import build_config
    path = os.path.join(ROOT, "configs", "cpu", f"{env}_medium_{DEFAULT_CORE}.yaml")
    if not os.path.isfile(path):
        return None
    base = build_config(EvalConfig, os.path.join(ROOT, "configs", "eval_base.yaml"))
    resolved, _ = with_planning(base, dict(build_config(TrainRunConfig, path).planning), origin=path)
    return {k: getattr(resolved, k) for k in ("planner", "policy_actions", *PLANNER_KEYS)}


def plans_as(row: dict, settings: dict | None) -> bool:
    """The row acted as ``settings`` say (for the model's own policy: the same reading of it)."""
    if settings is None or planner(row) != settings["planner"]:
        return False
    keys = ("policy_actions",) if settings["planner"] == "policy" else PLANNER_KEYS
    return all(row["planner_settings"].get(k) == settings[k] for k in keys if k in row["planner_settings"])


def pick(rows: list[dict], env: str) -> tuple[dict | None, dict | None]:
    """The planner row and the same run's policy row for ``env`` (None where nothing qualifies)."""
    report = [(i, r) for i, r in enumerate(rows)
              if r["env"] == env and r["protocol"] and r["seeds"] == REPORT_SEEDS and current(r)
              and r["planner_settings"].get("quantize", "none") == "none"]  # the fp32 planners
    planners = [(i, r) for i, r in report if planner(r) != "policy"]
    recipe = recipe_settings(env)
    pool = ([(i, r) for i, r in report if plans_as(r, recipe)]
            or [(i, r) for i, r in planners if default_critic(r)] or planners)
    if not pool:
        return None, None
    pool = [(i, r) for i, r in pool if r["core"] == DEFAULT_CORE] or pool
    most_runs = max(r.get("training_seeds", 1) for _, r in pool)
    pool = [(i, r) for i, r in pool if r.get("training_seeds", 1) == most_runs]
    best = max(pool, key=lambda item: item[0])[1]  # the newest
    policies = [r for _, r in report if planner(r) == "policy" and same_run(r, best)]
    by_reading = {r["planner_settings"].get("policy_actions", "greedy"): r for r in policies}
    return best, by_reading.get("median") or by_reading.get("greedy")


def runs(row: dict | None) -> str:
    """Independent training runs the row's score averages."""
    return "-" if row is None else str(row.get("training_seeds", 1))


def score(row: dict | None, bold: bool = True) -> str:
    if row is None:
        return "n/a"
    mean = f"{row['score']['mean']:.1f}"
    return f"{f'**{mean}**' if bold else mean} ± {row['score']['sem']:.1f}"


def describe(row: dict) -> str:
    """How the planner row acted, and on which model."""
    actions = row["actions"].removesuffix(" (raw weights)")
    tokens = f", {row['tokens'] / 1e6:.0f}M tokens" if row.get("tokens") else ""
    weighted = (f", action tokens advantage-weighted (beta {row['advantage_beta']:g})"
                if row.get("advantage_beta") else "")
    return f"{actions}; {row['core']}{tokens}{weighted}"


def table(rows: list[dict], reproductions: dict) -> str:
    lines = []
    for env in ENVS:
        best, policy = pick(rows, env)
        behaviour = reproductions.get(f"{env}-medium", {}).get("normalized_mean")
        reading = "" if policy is None else f" ({policy['planner_settings'].get('policy_actions', 'greedy')})"
        lines.append([f"{env}-medium", "none measured" if best is None else describe(best), score(best),
                      score(policy, bold=False) + reading, "n/a" if behaviour is None else f"{behaviour:.1f}",
                      f"{PUBLISHED['TT'][env]:.1f}", f"{PUBLISHED['IQL'][env]:.1f}", runs(best)])
    columns = ["data", "planner (model)", "planner>", "the model's own policy>", "dataset's behaviour>",
               "TT (published)>", "IQL (published)>", "training runs averaged>"]
    note = (f"(D4RL-normalized scores, mean ± s.e.m. of {COMPARABLE_EPISODES} episodes of "
            f"{COMPARABLE_STEPS:,} steps per run on seeds {REPORT_SEEDS[0]}-{REPORT_SEEDS[1]}; where "
            f"several training runs are averaged, the mean of the runs' means ± its standard error "
            f"over runs; planner: the newest row planning as the env's S5 recipe says (`planner=recipe`, "
            f"the default) averaging the most training runs, else the newest critic-planner row, among "
            f"settings the planners still offer; policy: the same runs on the same "
            f"seeds; behaviour: the mean of the dataset's episodes; published: Janner et al., 2021 and "
            f"Kostrikov et al., 2021, on D4RL's -medium-v2 data)")
    return markdown_table(columns, lines) + "\n\n" + note


def bars(rows: list[dict], reproductions: dict, env: str) -> list[tuple[str, float, float, str]]:
    """(label, value, standard error, colour) of one environment's panel; a missing value is 0."""
    best, policy = pick(rows, env)
    behaviour = reproductions.get(f"{env}-medium", {}).get("normalized_mean")
    found = best is not None
    return [(planner(best) if found else "planner", best["score"]["mean"] if found else 0.0,
             best["score"]["sem"] if found else 0.0,
             "tab:green" if found and planner(best) == "critic" else "tab:blue"),
            ("own policy", policy["score"]["mean"] if policy else 0.0,
             policy["score"]["sem"] if policy else 0.0, "tab:orange"),
            ("data", behaviour if behaviour is not None else 0.0, 0.0, "tab:gray"),
            ("TT", PUBLISHED["TT"][env], 0.0, "lightgray"),
            ("IQL", PUBLISHED["IQL"][env], 0.0, "lightgray")]


def plot(rows: list[dict], reproductions: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(ENVS), figsize=(3.2 * len(ENVS), 2.8), sharey=True)
    panels = [bars(rows, reproductions, env) for env in ENVS]
    heights = [value + error for panel in panels for _, value, error, _ in panel]
    axes[0].set_ylim(min(0.0, *heights), 1.12 * max(heights))  # room for the labels over the bars
    for ax, env, panel in zip(axes, ENVS, panels):
        labels, values, errors, colors = zip(*panel)
        xs = list(range(len(labels)))
        ax.bar(xs, values, color=colors)
        for x, value, error in zip(xs, values, errors):
            if error:
                ax.errorbar(x, value, yerr=error, color="black", capsize=3, linewidth=1)
            ax.annotate(f"{value:.1f}", (x, value + error), xytext=(0, 2), textcoords="offset points",
                        ha="center", fontsize=7)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_title(f"{env}-medium", fontsize=9)
    axes[0].set_ylabel("normalized score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", default=os.path.join(RESULTS, "scores.json"))
    parser.add_argument("--reproductions", default=os.path.join(RESULTS, "reproductions.json"))
    parser.add_argument("--png", default=os.path.join(RESULTS, "headline.png"))
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'headline' block to rewrite (README.md)")
    args = parser.parse_args(argv)
    with open(args.scores) as f:
        rows = json.load(f)["rows"]
    with open(args.reproductions) as f:
        reproductions = json.load(f)
    text = table(rows, reproductions)
    print(text)
    plot(rows, reproductions, args.png)
    if args.readme:
        replace_block(args.readme, "headline", text + f"\n\n![headline]({link(args.readme, args.png)})")
    return text


if __name__ == "__main__":
    main()
