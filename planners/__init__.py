"""Planners: how a trained trajectory model chooses actions. A new planner is one class with
``plan(context) -> Plan`` and one line in :data:`PLANNERS`; ``eval.py planner=<name>`` picks it."""
from __future__ import annotations

import torch

from planners.beam import BeamPlanner, Plan
from planners.policy import PolicyPlanner
from trajectory.configutil import ConfigError

PLANNERS = {
    "beam": BeamPlanner,  # TT's beam search (optionally pessimistic: percentile, likelihood_weight)
    "policy": PolicyPlanner,  # the model's own action distribution, no search
}


def build_planner(model, discretizer, layout, cfg, generator: torch.Generator | None = None):
    """The planner ``cfg.planner`` names, over ``model``."""
    if cfg.planner not in PLANNERS:
        raise ConfigError(f"unknown planner '{cfg.planner}'; choose one of: {', '.join(PLANNERS)}")
    return PLANNERS[cfg.planner](model, discretizer, layout, cfg, generator)


__all__ = ["PLANNERS", "BeamPlanner", "Plan", "PolicyPlanner", "build_planner"]
