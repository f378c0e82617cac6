"""Planners: how a trained trajectory model chooses actions. A new planner is one class with
``plan(context) -> Plan`` and one line in :data:`PLANNER_CATALOG`; ``eval.py planner=<name>`` picks it.

The catalog names classes by import path, so :func:`check_planner` runs before torch is imported."""
from __future__ import annotations

from typing import Any

from trajectory.configutil import ConfigError, load_object

PLANNER_CATALOG = {
    # TT's beam search (optionally wary: percentile, likelihood, support)
    "beam": "planners.beam:BeamPlanner",
    "policy": "planners.policy:PolicyPlanner",  # the model's own action distribution, no search
    # a few first actions, each followed by the model's median policy in imagination; the best
    "lookahead": "planners.lookahead:LookaheadPlanner",
    # the model's candidate actions ranked by the run's learned critic (train_critic.py)
    "critic": "planners.critic:CriticPlanner",
}


def check_planner(name: str) -> None:
    """An unknown planner name is a config error listing the known ones (torch-free: run it first)."""
    if name not in PLANNER_CATALOG:
        raise ConfigError(f"unknown planner '{name}'; choose one of: {', '.join(PLANNER_CATALOG)}")


def planner_class(name: str) -> type:
    check_planner(name)
    return load_object(PLANNER_CATALOG[name])


def build_planner(model, discretizer, layout, cfg, generator=None):
    """The planner ``cfg.planner`` names, over ``model``; ``generator`` (a torch.Generator) seeds it."""
    return planner_class(cfg.planner)(model, discretizer, layout, cfg, generator)


def __getattr__(name: str) -> Any:
    # the torch-side names load on first use, so importing this package stays torch-free
    if name == "PLANNERS":
        return {planner: planner_class(planner) for planner in PLANNER_CATALOG}
    if name in ("BeamPlanner", "Plan"):
        return load_object(f"planners.beam:{name}")
    if name == "PolicyPlanner":
        return load_object("planners.policy:PolicyPlanner")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PLANNERS", "PLANNER_CATALOG", "BeamPlanner", "Plan", "PolicyPlanner", "build_planner",
           "check_planner", "planner_class"]
