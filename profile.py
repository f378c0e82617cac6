"""Profile CPU inference (planning as eval.py plans) of trajectory models and write a readable report.

    python profile.py --config=configs/eval_base.yaml --device=cpu checkpoints_path=runs/<name>
"""
import sys

# This file shares its name with the standard library's `profile` (imported by cProfile and
# torch.compile). Importing the package first moves the repository root behind the standard
# library on sys.path (see trajectory/__init__.py), before anything imports torch.
import trajectory  # noqa: F401,E402  (must come first)
from trajectory.cli import run  # noqa: E402
from trajectory.config import EvalConfig  # noqa: E402

EXAMPLES = """
python profile.py --config=configs/eval_base.yaml --device=cpu --seed=42 checkpoints_path=runs/<name>
python profile.py --config=configs/eval_base.yaml compare=gpt,hyena,retnet,s5 quantize=none,dynamic
"""


def profile_job(cfg: EvalConfig, given: set[str] = frozenset()) -> None:
    import dataclasses

    from planners import check_planner_inputs, needs_critic
    from planners.recipe import RECIPE, describe, resolve_planning
    from trajectory.configutil import ConfigError
    from trajectory.models.cores import check_core_config
    if not cfg.checkpoints_path and cfg.planner == RECIPE:
        cfg = dataclasses.replace(cfg, planner="beam")  # random weights: no run, no recipe, no critic
    cfg, taken = resolve_planning(cfg, given)  # planner=recipe: the run's own, the command line wins
    if taken:
        print(describe(taken), flush=True)
    # torch-free checks first: a mistyped name or a missing critic is reported at once
    check_planner_inputs(cfg)
    if needs_critic(cfg) and not cfg.checkpoints_path:
        raise ConfigError(f"planner={cfg.planner} ranks with a run's critic: give checkpoints_path=<run> "
                          f"(with its critic), or profile planner=beam or planner=policy")
    for core in filter(None, (c.strip() for c in cfg.compare.split(","))):
        check_core_config(core)
    import os

    from planners import run_dir_of
    from trajectory.io import check_writable_folder
    out = cfg.out or (os.path.join(run_dir_of(cfg), "profile") if cfg.checkpoints_path
                      else os.path.join("runs", "profile"))
    # the report, its plots, torch's traces and tensorboard: tens of MB at most
    check_writable_folder(out, 64 << 20, f"out={out}", "name another folder with out=<folder>")
    try:
        from planners.profiling import profile_planning
    except ImportError as err:
        raise SystemExit(f"error: profiling is not available in this installation ({err})") from None
    profile_planning(cfg)


def main(argv=None) -> int:
    from planners.recipe import command_line_keys
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(EvalConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES,
               lambda cfg: profile_job(cfg, command_line_keys(argv)))


if __name__ == "__main__":
    sys.exit(main())
