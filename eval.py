"""Roll out a trained trajectory model with beam-search planning and report normalized scores.

    python eval.py --config=configs/eval_base.yaml --device=cpu --seed=42 \
        checkpoints_path=runs/halfcheetah-medium-gpt beam_width=32
"""
import sys

from trajectory.cli import run
from trajectory.config import EvalConfig

EXAMPLES = """
python eval.py --config=configs/eval_base.yaml --device=cpu --seed=42 \\
    checkpoints_path=runs/<name> beam_width=32
python eval.py --config=configs/eval_base.yaml checkpoints_path=runs/<name> n_episodes=5 beam_width=16
"""


def evaluate(cfg: EvalConfig, given: set[str] = frozenset()) -> None:
    from planners import check_eval_output, check_planner_inputs
    from planners.recipe import describe, resolve_planning
    cfg, taken = resolve_planning(cfg, given)  # planner=recipe: the run's own, the command line wins
    if taken:
        print(describe(taken), flush=True)
    check_planner_inputs(cfg)  # torch-free: a mistyped planner or a missing critic, at once
    check_eval_output(cfg)  # and a report folder that cannot be written, before the rollout
    try:
        from planners.rollout import evaluate as rollout_evaluate
    except ImportError as err:
        raise SystemExit(f"error: planning is not available in this installation ({err})") from None
    rollout_evaluate(cfg)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from planners.recipe import command_line_keys
    return run(EvalConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES,
               lambda cfg: evaluate(cfg, command_line_keys(argv)))


if __name__ == "__main__":
    sys.exit(main())
