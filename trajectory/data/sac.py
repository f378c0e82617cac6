"""Soft Actor-Critic (Haarnoja et al., 2018, with learned temperature) to train the behaviour policies
of the local reproductions (halfcheetah-, hopper- and walker2d-medium).

D4RL's "medium" policy was a SAC agent stopped early, at about a third of expert return. We train a
*population* of independent agents in one process: every weight has a leading member dimension, so one
batched update (``baddbmm``) serves all members. On a GPU the update costs about the same for 1 or 16
members; on a CPU two members side by side use both cores. Members share nothing but the kernels:
losses are summed over members and parameters are disjoint, so each member's gradient is its own.

Every ``eval_every`` steps each member is evaluated; a member whose mean return (mean actions, or
sampled ones with ``select_by=stochastic``, as the dataset generator acts) falls inside
``[target_low, target_high]`` is snapshotted to ``<out>/candidates`` (the first time only, unless
``keep_all_in_range``). ``python -m trajectory.data.policy_card`` then installs one as a package policy.
Every ``save_every`` steps the whole run is checkpointed (``<out>/checkpoint``); ``resume=true`` goes on
from there, so a run can span several sittings.

    python -m trajectory.data.sac out=runs/sac members=2 device=cpu
    python -m trajectory.data.sac out=runs/sac-hopper env_id=Hopper-v5 select_by=stochastic \
        target_low=1250 target_high=1650 keep_all_in_range=true stop_when_all_in_range=false
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from trajectory.configutil import ConfigError


@dataclass
class SACConfig:
    out: str = "runs/sac"  # where snapshots, logs and the selected policy go
    env_id: str = "HalfCheetah-v5"
    members: int = 2  # independent agents trained side by side (different seeds)
    seed: int = 0  # member k uses seed + k
    device: str = "cpu"
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    hidden: int = 256
    max_steps: int = 300_000  # env steps per member
    budget_minutes: float = 0.0  # stop after this wall time (0: no limit)
    random_steps: int = 5_000  # uniform random actions before the policy acts
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 3e-4
    eval_every: int = 10_000
    eval_episodes: int = 5
    target_low: float = 4300.0  # D4RL's halfcheetah-medium mean return is about 4,800
    target_high: float = 5300.0
    stop_when_all_in_range: bool = True  # stop once every member has a snapshot in range
    # which return the target range applies to: "deterministic" (mean action) or "stochastic" (sampled
    # actions, as the dataset generator acts; for Hopper and Walker2d the two differ by hundreds)
    select_by: str = "deterministic"
    keep_all_in_range: bool = False  # snapshot every evaluation in range, not only the first
    save_every: int = 10_000  # env steps between checkpoints (<out>/checkpoint; 0: never)
    resume: bool = False  # continue from <out>/checkpoint (episodes in progress start over)

    def __post_init__(self) -> None:
        if self.select_by not in ("deterministic", "stochastic"):
            raise ConfigError(f"select_by must be 'deterministic' or 'stochastic', got '{self.select_by}'")



def _train(cfg: SACConfig) -> None:
    from trajectory.data.soft_actor_critic import train
    print(json.dumps(train(cfg), indent=1))


def main(argv=None) -> int:
    from trajectory.cli import run
    return run(SACConfig, argv, "Train a population of SAC agents; snapshots in the target return range "
               "become behaviour-policy candidates.",
               "python -m trajectory.data.sac out=runs/sac members=2 device=cpu max_steps=150000\n"
               "python -m trajectory.data.sac out=runs/sac resume=true max_steps=300000", _train)


def __getattr__(name: str) -> Any:
    # the networks (and torch) load on first use: the command line is checked before torch is imported
    from trajectory.data import soft_actor_critic
    return getattr(soft_actor_critic, name)


if __name__ == "__main__":
    sys.exit(main())
