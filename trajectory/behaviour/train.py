"""Train a population of SAC agents (:mod:`trajectory.behaviour.sac`); snapshots whose return falls
in the target range become behaviour-policy candidates.

    python -m trajectory.behaviour.train out=runs/sac members=2 device=cpu
    python -m trajectory.behaviour.train out=runs/sac-hopper env_id=Hopper-v5 select_by=stochastic \
        target_low=1250 target_high=1650 keep_all_in_range=true stop_when_all_in_range=false
"""
from __future__ import annotations

import json
import sys

from trajectory.behaviour.config import SACConfig


def _train(cfg: SACConfig) -> None:
    from trajectory.behaviour.sac import train  # torch loads only once the command line is checked
    print(json.dumps(train(cfg), indent=1))


def main(argv=None) -> int:
    from trajectory.cli import run
    return run(SACConfig, argv, "Train a population of SAC agents; snapshots in the target return range "
               "become behaviour-policy candidates.",
               "python -m trajectory.behaviour.train out=runs/sac members=2 device=cpu max_steps=150000\n"
               "python -m trajectory.behaviour.train out=runs/sac resume=true max_steps=300000", _train)


if __name__ == "__main__":
    sys.exit(main())
