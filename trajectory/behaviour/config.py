"""The settings of a SAC training run (``python -m trajectory.behaviour.train``), importable without
torch so that a mistyped key is reported at once."""
from __future__ import annotations

from dataclasses import dataclass

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
