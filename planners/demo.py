"""``make demo``: the main job end to end on the CPU default, with an honest summary.

1. data: the halfcheetah-medium reproduction (generated on first use, then cached) and its tokens;
2. the run's critic (``train_critic.py recipe=<the CPU config>``: implicit Q-learning on the data)
   for ``critic_minutes``, first, because the recipe weights its model's action tokens by it
   (``train.advantage_beta``); skipped when the run has one, unless ``retrain=true``;
3. train: the CPU config of the chosen core for ``minutes`` (skipped when the run already has a
   checkpoint, unless ``retrain=true``), as ``processes`` DDP processes of one thread each (on this
   2-core machine two 1-thread processes train the CPU configs 1.06-1.27x faster than one 2-thread
   process: ``benchmarks/results/recipe_time.json``);
4. evaluate the checkpoint on the same seeds, by the score protocol (25 episodes of 1,000 steps):
   the planner as the recipe plans (``planner=recipe``: its ``planning`` block; the critic ranking
   the model's candidate actions), TT's beam search with the settings of
   ``configs/eval_base.yaml``, and the model's own policy with no search, the baseline the planners
   have to beat, taking each action token greedily and at its median (:data:`WAYS_TO_ACT`);
5. a summary: dataset return, training, every score with its standard error, failed episodes.

    python -m planners.demo [core=s5] [minutes=18] [critic_minutes=15] [processes=2] [episodes=25] \
        [eval_steps=1000] [seed=1000]
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import ClassVar

from trajectory.cli import run
from trajectory.configutil import Ranges, build_config, check_ranges
from trajectory.io import save_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class DemoConfig:
    core: str = "s5"  # which CPU config to train (s5 plans fastest on a CPU: benchmarks/results)
    minutes: float = 18.0  # training budget of the model
    # training budget of the critic (0: no critic, no critic planner); 15, not 12: on the demo's run a
    # 12-minute critic (107k steps) ranked to 51.7, the same continued to 15 (132k) to 52.5
    critic_minutes: float = 15.0
    retrain: bool = False  # train again even if the run has a checkpoint
    processes: int = 2  # DDP training processes on the CPU, one torch thread each (1: this process)
    episodes: int = 25  # evaluation episodes, planned in one batch (25: the score protocol)
    eval_steps: int = 1000  # env steps per episode (1000 = a full HalfCheetah episode)
    seed: int = 1000  # episode i starts from seed + i, the same for planner and policy
    device: str = "cpu"

    ranges: ClassVar[Ranges] = {"minutes": "(0, inf)", "critic_minutes": ("[0, inf)", "0: no critic"),
                                "processes": "[1, inf)", "episodes": "[1, inf)", "eval_steps": "[1, inf)",
                                "seed": "[0, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self)


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# how the demo's checkpoint acts, each evaluated on the same seeds: (name, label, eval overrides)
WAYS_TO_ACT = (
    # the recipe's planning (configs/cpu/halfcheetah_medium_<core>.yaml): the critic planner
    ("critic", "critic-ranked planner", ["planner=recipe"]),
    ("beam", "beam-search planner", ["planner=beam"]),
    ("policy", "model's own policy (greedy)", ["planner=policy", "policy_actions=greedy"]),
    ("policymedian", "model's own policy (median)", ["planner=policy", "policy_actions=median"]),
)


def evaluate_all(cfg: DemoConfig, run_dir: str) -> dict:
    """Every way of :data:`WAYS_TO_ACT` (the critic planner only when the demo trains a critic:
    ``critic_minutes`` > 0), by the score protocol on the same seeds: name -> report."""
    from planners.recipe import resolve_planning
    from planners.rollout import evaluate
    from trajectory.config import EvalConfig

    reports = {}
    for name, _, overrides in WAYS_TO_ACT:
        if name == "critic" and not cfg.critic_minutes:
            continue
        eval_cfg = build_config(EvalConfig, os.path.join(ROOT, "configs/eval_base.yaml"),
                                [f"checkpoints_path={run_dir}", f"n_episodes={cfg.episodes}",
                                 f"max_episode_steps={cfg.eval_steps}", f"seed={cfg.seed}",
                                 *overrides, f"device={cfg.device}",
                                 f"out={os.path.join(run_dir, f'eval_{name}_{cfg.seed}')}"])
        reports[name] = evaluate(resolve_planning(eval_cfg)[0])
    return reports


def train_in_processes(config_path: str, overrides: list[str], processes: int) -> None:
    """``train.py`` as ``processes`` DDP ranks (torch's launcher, gloo), one torch thread each."""
    from trajectory.training.distributed import launch
    status = launch([os.path.join(ROOT, "train.py"), f"--config={config_path}", *overrides], processes)
    if status:
        raise RuntimeError(f"training ({processes} processes) stopped with exit status {status}; its "
                           f"messages are above (processes=1 trains in this process instead)")


def train_demo_critic(cfg: DemoConfig, run_dir: str, threads: int, recipe: str = "") -> dict | None:
    """The run's critic for ``cfg.critic_minutes`` (skipped when it has one and ``retrain`` is off),
    trained before the model from ``recipe``'s data settings where given (a recipe that weights its
    action tokens by its own critic needs it first)."""
    from trajectory.training.critic import CriticRunConfig, critic_folder, train_critic
    if not cfg.critic_minutes:
        return None
    stage(f"2. train the critic: {cfg.critic_minutes:g} minutes on {cfg.device}")
    folder = critic_folder(run_dir)
    if os.path.isfile(os.path.join(folder, "critic.pt")) and not cfg.retrain:
        with open(os.path.join(folder, "metrics.json")) as f:
            metrics = json.load(f)
        if metrics.get("stop_reason") != "signal":
            print(f"{folder} already has a critic: skipping its training (retrain=true to train again)")
            return metrics
        print(f"{folder} holds a critic stopped by a signal at step {metrics.get('step')}: training it again")
    # the time budget ends it (the default step count is more than the demo's minutes allow)
    metrics = train_critic(CriticRunConfig(run=run_dir, recipe=recipe, budget_minutes=cfg.critic_minutes,
                                           threads=threads, device=cfg.device, overwrite=True))
    if metrics.get("stop_reason") == "signal":  # the model must not be weighted by a half-trained critic
        raise SystemExit(f"error: the critic was stopped by a signal at step {metrics.get('step')}; "
                         f"make demo again trains it again")
    return metrics


def demo(cfg: DemoConfig) -> dict:
    from trajectory.models.cores import check_core_config
    check_core_config(cfg.core)  # torch-free: a mistyped core is reported at once
    from trajectory.checkpoint_folder import CHECKPOINT_DIR, clear_run_outputs
    from trajectory.config import TrainRunConfig
    from trajectory.data.dataset import build_dataset, describe
    from trajectory.score_stats import format_score

    summary: dict = {}
    demo_start = time.time()
    config_path = os.path.join(ROOT, f"configs/cpu/halfcheetah_medium_{cfg.core}.yaml")
    train_overrides = [f"train.budget_minutes={cfg.minutes}", f"device={cfg.device}"]
    if not cfg.critic_minutes:  # no critic: nothing to weight the action tokens by
        train_overrides.append("train.advantage_beta=0")
    train_cfg = build_config(TrainRunConfig, config_path, train_overrides)
    run_dir = os.path.join(train_cfg.runs_dir, train_cfg.name)
    if cfg.retrain and os.path.isdir(run_dir):  # the old run goes first: its critic is retrained too
        removed = clear_run_outputs(run_dir)
        print(f"retrain=true: removed the previous run's {', '.join(removed) or 'nothing'} from {run_dir}")
    stage("1. data: halfcheetah-medium")
    start = time.time()
    _, _, info = build_dataset(train_cfg.data)
    print(describe(info))
    summary["data"] = {"seconds": round(time.time() - start, 1),
                       "behaviour": {k: info.get(k) for k in ("return_mean", "normalized_mean")}}

    processes = cfg.processes if cfg.device == "cpu" else 1  # one GPU: one process
    # the critic first: the recipe's model weights its action tokens by it (train.advantage_beta)
    summary["critic"] = train_demo_critic(cfg, run_dir, processes, config_path)
    stage(f"3. train: {cfg.core} core, {cfg.minutes:g} minutes on {cfg.device}"
          + (f", {processes} processes" if processes > 1 else ""))
    if os.path.isdir(os.path.join(run_dir, CHECKPOINT_DIR)):
        print(f"{run_dir} already has a checkpoint: skipping training (retrain=true to train again)")
    elif processes > 1:
        train_in_processes(config_path, train_overrides, processes)
    else:
        from trajectory.training.trainer import train
        train(train_cfg)
    with open(os.path.join(run_dir, CHECKPOINT_DIR, "metrics.json")) as f:
        metrics = json.load(f)
    if metrics.get("stop_reason") == "signal":  # scores of a half-trained model would mislead
        raise SystemExit(f"error: the model in {run_dir} was stopped by a signal at "
                         f"{metrics.get('tokens', 0) / 1e6:.0f}M tokens; train it again with make demo "
                         f"DEMO_ARGS=retrain=true")
    summary["train"] = {k: metrics.get(k) for k in ("loss", "act", "obs", "reward", "value", "step",
                                                    "tokens", "stop_reason", "held_out")}

    stage(f"4. evaluate: {cfg.episodes} episodes x {cfg.eval_steps} steps, seeds {cfg.seed}-"
          f"{cfg.seed + cfg.episodes - 1}: the planners, then the model's own policy (greedy, median)")
    reports = evaluate_all(cfg, run_dir)
    summary["eval"] = {name: {"score": r["score"], "failed": len(r["failed_episodes"]),
                              "ms_per_env_step": r["ms_per_env_step"], "warnings": r["warnings"]}
                       for name, r in reports.items()}

    stage("5. summary")
    behaviour = summary["data"]["behaviour"] or {}
    print(f"dataset (behaviour policy) return: {behaviour.get('return_mean') or float('nan'):.0f} "
          f"(normalized {behaviour.get('normalized_mean') or float('nan'):.1f})")
    print(f"training: {metrics.get('step')} steps, {metrics.get('tokens', 0) / 1e6:.0f}M tokens, "
          f"final loss {metrics.get('loss', float('nan')):.3f}, stopped by {metrics.get('stop_reason')}")
    if summary["critic"]:
        print(f"critic: {summary['critic']['step']} steps (implicit Q-learning, expectile "
              f"{summary['critic']['expectile']}), stopped by {summary['critic']['stop_reason']}")
    for name, label, _ in WAYS_TO_ACT:
        if name not in reports:
            continue
        r = reports[name]
        print(f"{label:>28}: normalized {format_score(r['score'])}, failed "
              f"{len(r['failed_episodes'])} of {len(r['returns'])}, {r['ms_per_env_step']:.0f} ms/env step")
    for warning in reports["beam"]["warnings"]:
        print(f"warning: {warning}")
    print("Trajectory Transformer reports 46.9 on halfcheetah-medium-v2 (a GPU-trained model)")
    summary["seconds"] = round(time.time() - demo_start, 1)  # the whole demo, data to summary
    print(f"the demo took {summary['seconds'] / 60:.1f} minutes")
    save_json(summary, os.path.join(run_dir, "demo_summary.json"))
    return summary


def main(argv=None) -> int:
    return run(DemoConfig, argv, __doc__.strip().splitlines()[0],
               "python -m planners.demo core=s5 minutes=5 episodes=5", demo)


if __name__ == "__main__":
    sys.exit(main())
