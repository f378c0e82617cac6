"""``make demo``: the main job end to end on the CPU default, with an honest summary.

1. data: the halfcheetah-medium reproduction (generated on first use, then cached) and its tokens;
2. train: the CPU config of the chosen core for ``minutes`` (skipped when the run already has a
   checkpoint, unless ``retrain=true``);
3. evaluate: beam-search planning rollouts of the trained model;
4. a short report: dataset return, training loss, evaluation return and normalized score.

    python -m trajectory.demo [core=gpt] [minutes=20] [episodes=5] [eval_steps=1000] [beam_width=32]
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from trajectory.cli import run
from trajectory.configutil import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class DemoConfig:
    core: str = "s5"  # which CPU config to train (s5 plans fastest on a CPU: benchmarks/results)
    minutes: float = 20.0  # training budget
    retrain: bool = False  # train again even if the run has a checkpoint
    episodes: int = 5  # evaluation episodes, planned in one batch
    eval_steps: int = 1000  # env steps per episode (1000 = a full HalfCheetah episode)
    beam_width: int = 32
    device: str = "cpu"


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def demo(cfg: DemoConfig) -> dict:
    from trajectory.checkpoint import CHECKPOINT_DIR
    from trajectory.config import EvalConfig, TrainRunConfig
    from trajectory.data.dataset import build_dataset, describe

    summary: dict = {}
    config_path = os.path.join(ROOT, f"configs/cpu/halfcheetah_medium_{cfg.core}.yaml")
    train_cfg = build_config(TrainRunConfig, config_path,
                             [f"train.budget_minutes={cfg.minutes}", f"device={cfg.device}"])
    stage("1. data: halfcheetah-medium")
    start = time.time()
    _, _, info = build_dataset(train_cfg.data)
    print(describe(info))
    summary["data"] = {"seconds": round(time.time() - start, 1),
                       "behaviour": {k: info.get(k) for k in ("return_mean", "normalized_mean")}}

    stage(f"2. train: {cfg.core} core, {cfg.minutes:g} minutes on {cfg.device}")
    run_dir = os.path.join(train_cfg.runs_dir, train_cfg.name)
    if os.path.isdir(os.path.join(run_dir, CHECKPOINT_DIR)) and not cfg.retrain:
        print(f"{run_dir} already has a checkpoint: skipping training (retrain=true to train again)")
    else:
        from trajectory.training.trainer import train
        train(train_cfg)
    with open(os.path.join(run_dir, CHECKPOINT_DIR, "metrics.json")) as f:
        metrics = json.load(f)
    summary["train"] = {k: metrics.get(k) for k in ("loss", "act", "obs", "reward", "value", "step",
                                                    "tokens", "stop_reason")}

    stage(f"3. evaluate: {cfg.episodes} episodes x {cfg.eval_steps} steps, beam {cfg.beam_width}")
    from planners.rollout import evaluate
    eval_cfg = build_config(EvalConfig, os.path.join(ROOT, "configs/eval_base.yaml"),
                            [f"checkpoints_path={run_dir}", f"n_episodes={cfg.episodes}",
                             f"max_episode_steps={cfg.eval_steps}", f"beam_width={cfg.beam_width}",
                             f"device={cfg.device}"])
    report = evaluate(eval_cfg)
    summary["eval"] = {k: report[k] for k in ("return_mean", "return_std", "normalized_mean",
                                              "ms_per_env_step")}

    stage("4. summary")
    behaviour = summary["data"]["behaviour"] or {}
    print(f"dataset (behaviour policy) return: {behaviour.get('return_mean') or float('nan'):.0f} "
          f"(normalized {behaviour.get('normalized_mean') or float('nan'):.1f})")
    print(f"training: {metrics.get('step')} steps, final loss {metrics.get('loss', float('nan')):.3f}, "
          f"stopped by {metrics.get('stop_reason')}")
    partial = " (partial episodes: not comparable to published scores)" if cfg.eval_steps < 1000 else ""
    print(f"planning agent return: {report['return_mean']:.0f} +- {report['return_std']:.0f}, "
          f"normalized {report['normalized_mean']:.1f}{partial}; "
          f"Trajectory Transformer reports 46.9 on halfcheetah-medium-v2")
    with open(os.path.join(run_dir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary


def main(argv=None) -> int:
    return run(DemoConfig, argv, __doc__.strip().splitlines()[0],
               "python -m trajectory.demo core=s5 minutes=5", demo)


if __name__ == "__main__":
    sys.exit(main())
