"""Planners: how a trained trajectory model chooses actions. A new planner is one class with
``plan(context) -> Plan`` and one line in :data:`PLANNERS`; ``eval.py planner=<name>`` picks it."""
from __future__ import annotations

import torch

from planners.beam import BeamPlanner, Plan
from planners.policy import PolicyPlanner
from trajectory.configutil import ConfigError

PLANNERS = {
    "beam": BeamPlanner,  # TT's beam search (optionally wary: percentile, likelihood, support)
    "policy": PolicyPlanner,  # the model's own action distribution, no search
}


def check_planner(name: str) -> None:
    """An unknown planner name is a config error listing the known ones (cheap: run it early)."""
    if name not in PLANNERS:
        raise ConfigError(f"unknown planner '{name}'; choose one of: {', '.join(PLANNERS)}")


def build_planner(model, discretizer, layout, cfg, generator: torch.Generator | None = None):
    """The planner ``cfg.planner`` names, over ``model``."""
    check_planner(cfg.planner)
    return PLANNERS[cfg.planner](model, discretizer, layout, cfg, generator)


__all__ = ["PLANNERS", "BeamPlanner", "Plan", "PolicyPlanner", "build_planner", "check_planner"]
