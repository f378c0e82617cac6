"""Scores over independent training runs: one recipe trained with several seeds (model and critic),
each run evaluated by the score protocol, and the runs combined into one headline row.

    python benchmarks/training_seeds.py run --config configs/cpu/halfcheetah_medium_s5.yaml \\
        --seeds 1 2 3 --max-tokens 166e6 --critic-steps 135000 [--runs-dir runs/seeds] \\
        [--eval-seed 1000] [-- data.cache_dir=data ...]
    python benchmarks/training_seeds.py combine --config ... --seeds 1 2 3 [--runs-dir ...] \\
        --training "166M tokens ..." --hardware "2 CPU cores"

``run`` does, per seed, whatever is not done yet (so a stopped job picks up where it stopped): train
the critic of ``<name>-seed<S>`` for ``--critic-steps`` with that seed (first: a recipe may weight
its model's action tokens by it, ``train.advantage_beta``), train the model to the token budget as
2 DDP processes (a token budget, not minutes, so a run does not depend on what else the machine
does), then evaluate it on the report seeds with the default planner of ``configs/eval_base.yaml``
(the recipe's own planning) and with the model's own median policy (no search). ``combine`` copies
each run's reports under ``benchmarks/results/evals/<name>_seeds/``, adds one row per run and per
way of acting to ``benchmarks/results/scores.json`` and then, per way of acting, the combined row
(:func:`scores.combine_rows`: the mean over runs, its standard error over runs and over episodes,
``training_seeds``), and rewrites docs/results.md's table and the README's headline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from readme_blocks import ROOT  # noqa: E402

# how each run acts on the report seeds: (folder name, eval overrides on configs/eval_base.yaml)
WAYS_TO_ACT = (("planner", []), ("policy", ["planner=policy", "policy_actions=median"]))


def run_dir(runs_dir: str, name: str, seed: int) -> str:
    return os.path.join(runs_dir, f"{name}-seed{seed}")


def recipe_name(config: str) -> str:
    from trajectory.config import TrainRunConfig
    from trajectory.configutil import build_config
    return build_config(TrainRunConfig, config, []).name


def trained_to(folder: str) -> dict | None:
    """The saved checkpoint's metrics, or None where the run has none yet."""
    from trajectory.checkpoint_folder import CHECKPOINT_DIR
    path = os.path.join(folder, CHECKPOINT_DIR, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def stopped_short(what: str, reached: float, budget: float, reason: str | None) -> SystemExit:
    """A stage that returned before its budget (stopped by a signal, say): the next stage must not
    build on it (a model weighted by a half-trained critic, scores of a half-trained model)."""
    why = reason or "no reason saved"
    return SystemExit(f"error: {what} stopped at {reached:,.0f} of {budget:,.0f} ({why}); run the same "
                      f"command again to resume it")


def train_model(args, folder: str, seed: int) -> None:
    from trajectory.training.distributed import launch
    metrics = trained_to(folder)
    if metrics and metrics.get("tokens", 0) >= args.max_tokens:
        print(f"{folder}: trained to {metrics['tokens'] / 1e6:.0f}M tokens", flush=True)
        return
    budget = ["train.budget_minutes=0", f"train.max_tokens={int(args.max_tokens)}", *args.overrides]
    if metrics:  # stopped part-way: continue it
        command = [os.path.join(ROOT, "train.py"), "--resume", folder, *budget]
    else:
        command = [os.path.join(ROOT, "train.py"), f"--config={args.config}", f"seed={seed}",
                   f"name={os.path.basename(folder)}", f"runs_dir={args.runs_dir}", *budget]
    print(f"== train {folder}", flush=True)
    if launch(command, args.processes):
        raise SystemExit(f"error: training {folder} failed (its messages are above)")
    metrics = trained_to(folder) or {}
    if metrics.get("tokens", 0) < args.max_tokens:
        raise stopped_short(f"the model of {folder}", metrics.get("tokens", 0), args.max_tokens,
                            metrics.get("stop_reason"))


def resolved_recipe(args, folder: str, seed: int, scratch: str) -> str:
    """The recipe with this run's settings (seed, folder, the command line's overrides), as a file
    ``train_critic.py recipe=`` reads before the model exists."""
    from trajectory.config import TrainRunConfig
    from trajectory.configutil import build_config, to_yaml
    cfg = build_config(TrainRunConfig, args.config, [f"seed={seed}", f"name={os.path.basename(folder)}",
                                                     f"runs_dir={args.runs_dir}", *args.overrides])
    path = os.path.join(scratch, "recipe.yaml")
    with open(path, "w") as f:
        f.write(to_yaml(cfg))
    return path


def train_run_critic(args, folder: str, seed: int) -> None:
    import tempfile

    from trajectory.training.critic import CriticRunConfig, critic_folder, train_critic
    critic = critic_folder(folder)
    metrics = os.path.join(critic, "metrics.json")
    if os.path.isfile(os.path.join(critic, "critic.pt")) and os.path.isfile(metrics):
        with open(metrics) as f:
            if json.load(f).get("step", 0) >= args.critic_steps:
                print(f"{critic}: trained", flush=True)
                return
    resume = os.path.isfile(os.path.join(critic, "trainer.pt"))
    print(f"== critic {folder}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        train_critic(CriticRunConfig(run=folder, recipe=resolved_recipe(args, folder, seed, scratch),
                                     steps=args.critic_steps, seed=seed, threads=args.processes,
                                     resume=resume, overwrite=not resume))
    with open(metrics) as f:
        saved = json.load(f)
    if saved.get("step", 0) < args.critic_steps:
        raise stopped_short(f"the critic of {folder}", saved.get("step", 0), args.critic_steps,
                            saved.get("stop_reason"))


def evaluate_run(args, folder: str) -> None:
    from planners.rollout import evaluate
    from trajectory.config import EvalConfig
    from trajectory.configutil import build_config
    for way, overrides in WAYS_TO_ACT:
        out = os.path.join(folder, f"eval_{way}_{args.eval_seed}")
        if os.path.isfile(os.path.join(out, "report.json")):
            continue
        print(f"== evaluate {folder}: {way}", flush=True)
        cfg = build_config(EvalConfig, os.path.join(ROOT, "configs/eval_base.yaml"),
                           [f"checkpoints_path={folder}", f"seed={args.eval_seed}",
                            f"threads={args.processes}", f"out={out}", *overrides, *args.eval_overrides])
        evaluate(cfg)


def critic_needed(args) -> str:
    """Why the recipe needs each run's own critic ('' where it does not): its action tokens
    weighted by it, or plans valued by it (a recipe without a planning block plans with one)."""
    from trajectory.config import TrainRunConfig
    from trajectory.configutil import build_config
    cfg = build_config(TrainRunConfig, args.config, list(args.overrides))
    if cfg.train.advantage_beta > 0 and not cfg.train.advantage_critic:
        return "its action tokens are weighted by the run's own critic (train.advantage_beta)"
    planning = cfg.planning or {"planner": "critic"}  # no planning block: the critic planner
    if planning.get("planner", "critic") == "critic" or planning.get("plan_value") == "critic":
        return "it plans with the run's critic (its planning block)"
    return ""


def run(args) -> None:
    name = args.name or recipe_name(args.config)
    why = "" if args.critic_steps else critic_needed(args)
    if why:
        raise SystemExit(f"error: --critic-steps 0 trains no critic, but {args.config} needs one: {why}; "
                         f"give the critic's steps")
    for seed in args.seeds:
        folder = run_dir(args.runs_dir, name, seed)
        if args.critic_steps:  # first: the model may be weighted by it
            train_run_critic(args, folder, seed)
        train_model(args, folder, seed)
        evaluate_run(args, folder)
    print("ALL RUNS DONE", flush=True)


def combine(args) -> None:
    import scores
    name = args.name or recipe_name(args.config)
    evals = os.path.join(args.evals_dir, f"{name}_seeds")
    rows = scores.load_rows()
    listed = []  # score_rows.tsv lines, so that `scores.py rebuild` makes the same rows
    for way, _ in WAYS_TO_ACT:
        per_run, targets = [], []
        for seed in args.seeds:
            source = os.path.join(run_dir(args.runs_dir, name, seed), f"eval_{way}_{args.eval_seed}")
            target = os.path.join(evals, f"seed{seed}_{way}")
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(os.path.join(source, "report.json"), os.path.join(target, "report.json"))
            row = scores.make_row(target, args.training, args.hardware, None)
            rows = [r for r in rows if r["id"] != row["id"]] + [row]
            per_run.append(row)
            inside = os.path.commonpath([target, ROOT]) == ROOT  # rebuild reads folders from the root
            targets.append(os.path.relpath(target, ROOT) if inside else target)
        combined = scores.combine_rows(per_run)
        rows = [r for r in rows if r["id"] != combined["id"]] + [combined]
        listed += [*targets, scores.RUNS_SEPARATOR.join(targets)]
    scores.save_rows(rows)
    tsv = args.rows
    with open(tsv) as f:
        known = {line.split("\t")[0] for line in f}
    with open(tsv, "a") as f:
        for folders in listed:
            if folders not in known:
                f.write(f"{folders}\t{args.training}\t{args.hardware}\n")
    scores.main(["table", "--readme", args.results_page])
    import headline
    headline.main(["--scores", scores.SCORES, "--png", os.path.join(os.path.dirname(scores.SCORES),
                                                                     "headline.png"),
                   "--readme", args.readme])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("run", "combine"):
        p = sub.add_parser(command)
        p.add_argument("--config", required=True, help="the recipe (a train.py config)")
        p.add_argument("--seeds", type=int, nargs="+", required=True)
        p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "seeds"))
        p.add_argument("--eval-seed", type=int, default=1000, help="first episode seed (report seeds)")
        p.add_argument("--name", default="", help="the runs' name before -seed<S> (default: the recipe's "
                       "name); also names the reports' folder")
        if command == "run":
            p.add_argument("--max-tokens", type=float, required=True)
            p.add_argument("--critic-steps", type=int, required=True,
                           help="the run's critic's training steps; 0: no critic (a recipe that "
                                "neither weights its model by one nor plans with one)")
            p.add_argument("--processes", type=int, default=2)
            p.add_argument("--eval-overrides", nargs="*", default=[],
                           help="eval.py overrides (tests: n_episodes=2 max_episode_steps=3)")
            p.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data.cache_dir=data")
        else:
            p.add_argument("--training", required=True, help="the recipe in words, for the rows")
            p.add_argument("--hardware", required=True)
            p.add_argument("--evals-dir", default=os.path.join(ROOT, "benchmarks", "results", "evals"))
            p.add_argument("--rows", default=os.path.join(ROOT, "benchmarks", "score_rows.tsv"),
                           help="the rows file of `scores.py rebuild`")
            p.add_argument("--results-page", default=os.path.join(ROOT, "docs", "results.md"))
            p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    args = parser.parse_args(argv)
    args.config = os.path.abspath(args.config)
    args.runs_dir = os.path.abspath(args.runs_dir)
    (run if args.command == "run" else combine)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
