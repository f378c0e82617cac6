"""Planners: how a trained trajectory model chooses actions. A new planner is one class with
``plan(context) -> Plan`` and one line in :data:`PLANNER_CATALOG`; ``eval.py planner=<name>`` picks it.

The catalog names classes by import path, so :func:`check_planner` runs before torch is imported."""
from __future__ import annotations

import os
from typing import Any

from trajectory.checkpoint_folder import CHECKPOINT_DIR, critic_folder
from trajectory.configutil import ConfigError, load_object
from trajectory.io import check_writable_folder
from trajectory.training import critic_provenance

PLANNER_CATALOG = {
    # the model's candidate actions ranked by the run's learned critic (train_critic.py): the default
    "critic": "planners.critic:CriticPlanner",
    "beam": "planners.beam:BeamPlanner",  # TT's beam search
    "policy": "planners.policy:PolicyPlanner",  # the model's own action distribution, no search
}


def check_planner(name: str) -> None:
    """An unknown planner name is a config error listing the known ones (torch-free: run it first)."""
    if name not in PLANNER_CATALOG:
        raise ConfigError(f"unknown planner '{name}'; choose one of: recipe (the run's own), "
                          f"{', '.join(PLANNER_CATALOG)}")


# planners that rank with the run's critic (train_critic.py), and so cannot plan without one
NEEDS_CRITIC = ("critic",)


def run_dir_of(cfg) -> str:
    """The run folder of the checkpoint being evaluated (``cfg.checkpoints_path``, or its parent)."""
    run_dir = os.path.normpath(cfg.checkpoints_path or ".")
    if os.path.basename(run_dir) == CHECKPOINT_DIR:
        run_dir = os.path.dirname(run_dir)
    return run_dir


def eval_output_folder(cfg) -> str:
    """Where eval.py writes its report: ``cfg.out``, or ``eval`` (``eval_<mode>`` for int8) in the run."""
    folder = "eval" if cfg.quantize == "none" else f"eval_{cfg.quantize}"  # precisions side by side
    return cfg.out or os.path.join(run_dir_of(cfg), folder)


def report_bytes(cfg) -> int:
    """About what an evaluation writes at most: its trace (six float32 per env step), the plot, the
    report and tensorboard (a few MB), and the animation's frames with render=true."""
    steps = cfg.n_episodes * cfg.max_episode_steps
    return (4 << 20) + steps * 6 * 4 + (cfg.max_episode_steps * (64 << 10) if cfg.render else 0)


def check_eval_output(cfg) -> str:
    """The report's folder, checked before any work (torch-free): a folder this process can write,
    with room for the report; -> the folder."""
    out = eval_output_folder(cfg)
    check_writable_folder(out, report_bytes(cfg), f"out={out}", "name another folder with out=<folder>")
    return out


def critic_path(cfg) -> str:
    """``cfg.critic``, or ``<run>/critic/critic.pt`` beside the checkpoint being evaluated."""
    if cfg.critic:
        return cfg.critic
    return os.path.join(critic_folder(run_dir_of(cfg)), "critic.pt")


def needs_critic(cfg) -> bool:
    return cfg.planner in NEEDS_CRITIC or (cfg.planner == "beam" and cfg.plan_value == "critic")


def check_planner_inputs(cfg) -> None:
    """The planner's name, and the critic it needs where it needs one, checked before any work
    (torch-free): one line naming the fix instead of a failure after the model has loaded."""
    from planners.recipe import resolve_planning
    cfg, _ = resolve_planning(cfg)
    check_planner(cfg.planner)
    if not (needs_critic(cfg) and cfg.checkpoints_path):
        return
    if not os.path.isfile(critic_path(cfg)):
        raise ConfigError(
            f"planner={cfg.planner} values actions with the run's critic, and there is none at "
            f"{critic_path(cfg)}: train it with `python train_critic.py run=<run dir>` (about 12 "
            f"minutes on 2 cores), pass critic=<critic.pt>, or plan without one (planner=policy or "
            f"planner=beam)")
    # a critic trained for another run (data, discount) would rank this one's actions wrongly
    run_dir = run_dir_of(cfg)
    critic_provenance.check_critic_fits(critic_provenance.read_beside(critic_path(cfg), run_dir),
                                        critic_path(cfg), critic_provenance.run_data_settings(
                                            cfg.checkpoints_path), run_dir)


def planner_class(name: str) -> type:
    check_planner(name)
    return load_object(PLANNER_CATALOG[name])


def build_planner(model, discretizer, layout, cfg, generator=None):
    """The planner ``cfg.planner`` names (``recipe``: the run's recipe's), over ``model``;
    ``generator`` (a torch.Generator) seeds it."""
    from planners.recipe import resolve_planning
    cfg, _ = resolve_planning(cfg)
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


__all__ = ["NEEDS_CRITIC", "PLANNERS", "PLANNER_CATALOG", "BeamPlanner", "Plan", "PolicyPlanner",
           "build_planner", "check_planner", "check_planner_inputs", "critic_path", "needs_critic",
           "planner_class", "run_dir_of"]
