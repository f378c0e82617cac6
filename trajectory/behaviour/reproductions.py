"""The datasets reproduced locally: each one's environment, committed behaviour policy, Minari id
and size (D4RL's ``<env>-medium``: 1M transitions of a SAC policy stopped at about a third of expert
return). ``data.source=<name>`` generates one on first use (:mod:`trajectory.behaviour.generate`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

POLICIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")


@dataclass(frozen=True)
class Reproduction:
    """A dataset that ``data.source=<name>`` generates on first use."""

    name: str  # what users pass as data.source
    env_id: str
    dataset_id: str  # its Minari id under <cache_dir>/minari
    policy: str  # behaviour policy file (a 1-member SAC actor)
    steps: int = 1_000_000  # transitions, as D4RL's medium datasets
    max_steps: int = 1000  # the environments' time limit
    seed: int = 0


def _reproduction(family: str, env_id: str) -> Reproduction:
    return Reproduction(f"{family}-medium", env_id, f"trajectory/{family}/medium-v0",
                        os.path.join(POLICIES, f"{family}_medium_policy.pt"))


REPRODUCTIONS = {r.name: r for r in (_reproduction("halfcheetah", "HalfCheetah-v5"),
                                     _reproduction("hopper", "Hopper-v5"),
                                     _reproduction("walker2d", "Walker2d-v5"))}
DEFAULT_REPRODUCTION = REPRODUCTIONS["halfcheetah-medium"]
DEFAULT_POLICY = DEFAULT_REPRODUCTION.policy
