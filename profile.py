"""Profile CPU inference (beam-search planning) of trajectory models and write a readable report.

    python profile.py --config=configs/eval_base.yaml --device=cpu checkpoints_path=runs/<name>
"""
import os
import sys

# This file shares its name with the standard library's `profile`, which `cProfile` (and through it
# torch.compile) imports. Running it as a script puts its folder first on sys.path, so the import
# would find this file instead; move the folder to the end: the standard library wins, and the
# package next to this file stays importable.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

from trajectory.cli import run  # noqa: E402
from trajectory.config import EvalConfig  # noqa: E402

EXAMPLES = """
python profile.py --config=configs/eval_base.yaml --device=cpu --seed=42 checkpoints_path=runs/<name>
python profile.py --config=configs/eval_base.yaml compare=gpt,hyena,retnet,s5 quantize=none,dynamic
"""


def profile_job(cfg: EvalConfig) -> None:
    try:
        from trajectory.profiling import profile_planning
    except ImportError as err:
        raise SystemExit(f"error: profiling is not available in this installation ({err})") from None
    profile_planning(cfg)


def main(argv=None) -> int:
    return run(EvalConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, profile_job)


if __name__ == "__main__":
    sys.exit(main())
