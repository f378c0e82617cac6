"""``planner=recipe``: plan as the run's recipe says.

A training recipe (``configs/cpu/<env>_<core>.yaml``) carries a ``planning`` block, the eval.py
settings measured best for its runs (``trajectory.config.PLANNING_KEYS``); train.py saves it in the
run's ``config.yaml``. The best planner differs by task (on halfcheetah the critic ranks 32 of the
model's actions; on hopper a critic-valued beam three steps deep does better), so the run, not one
global default, knows how it plans. Keys given explicitly (on eval.py's command line, or to
``Agent.from_checkpoint``) win over the recipe's; a run whose recipe says nothing plans with the critic
planner. Torch-free: it runs before any check that depends on the planner.
"""
from __future__ import annotations

import os
from typing import Iterable

from trajectory.configutil import from_dict, to_dict

RECIPE = "recipe"
FALLBACK_PLANNER = "critic"  # a run whose recipe names no planner


def recipe_planning(run_path: str | None) -> dict:
    """The ``planning`` block of the run at ``run_path`` (its folder or checkpoint folder), checked;
    {} where the run has no config yet (loading the run reports that) or its recipe says nothing."""
    from trajectory.checkpoint_folder import checkpoint_dir
    from trajectory.config import check_planning
    from trajectory.loaders import load_yaml
    if not run_path:
        return {}
    config = os.path.join(checkpoint_dir(run_path), "config.yaml")
    if not os.path.isfile(config):
        return {}
    planning = load_yaml(config, "restore the run's checkpoint folder or train it again").get("planning")
    if not isinstance(planning, dict):
        return {}
    check_planning(planning, f"{config}: planning")
    return planning


def resolve_planning(cfg, given: Iterable[str] = ()):
    """``cfg`` with ``planner=recipe`` replaced by the run's recipe (keys in ``given`` kept as they
    are) -> (the resolved config, the settings taken from the recipe). Any other planner: unchanged."""
    if cfg.planner != RECIPE:
        return cfg, {}
    return with_planning(cfg, recipe_planning(cfg.checkpoints_path), given,
                         f"the recipe of {cfg.checkpoints_path}")


def with_planning(cfg, planning: dict, given: Iterable[str] = (), origin: str = "a recipe"):
    """``cfg`` with a recipe's ``planning`` block applied but for the keys in ``given`` (the critic
    planner where it names none) -> (the new config, the settings taken from the block)."""
    given = set(given)
    taken = {k: v for k, v in planning.items() if k not in given}
    taken.setdefault("planner", FALLBACK_PLANNER)
    return from_dict(type(cfg), {**to_dict(cfg), **taken}, origin), taken


def describe(taken: dict) -> str:
    """One line for the console: what the recipe decided."""
    return "planning as the run's recipe says: " + " ".join(
        f"{k}={'null' if v is None else v}" for k, v in taken.items())


def command_line_keys(argv: Iterable[str]) -> set[str]:
    """The settings named on a command line (they win over a recipe's planning)."""
    from trajectory.configutil import split_argv
    return {item.split("=", 1)[0].strip() for item in split_argv(list(argv))[1]}


__all__ = ["FALLBACK_PLANNER", "RECIPE", "command_line_keys", "describe", "recipe_planning",
           "resolve_planning", "with_planning"]
