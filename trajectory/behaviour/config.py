"""The settings of a SAC training run (``python -m trajectory.behaviour.train``), importable without
torch so that a mistyped key is reported at once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trajectory.configutil import ConfigError, Ranges, check_ranges


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

    ranges: ClassVar[Ranges] = {
        "members": "[1, inf)", "seed": "[0, inf)", "threads": ("[0, inf)", "0: torch's default"),
        "hidden": "[1, inf)", "max_steps": "[1, inf)", "budget_minutes": ("[0, inf)", "0: no limit"),
        "random_steps": "[0, inf)", "batch_size": "[1, inf)", "gamma": "(0, 1]", "tau": "(0, 1]",
        "lr": "(0, inf)", "eval_every": "[1, inf)", "eval_episodes": "[1, inf)",
        "target_low": "(-inf, inf)", "target_high": "(-inf, inf)", "save_every": ("[0, inf)", "0: never")}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.target_low > self.target_high:
            raise ConfigError(f"target_low={self.target_low} must not exceed target_high={self.target_high}")
        if self.select_by not in ("deterministic", "stochastic"):
            raise ConfigError(f"select_by must be 'deterministic' or 'stochastic', got '{self.select_by}'")
