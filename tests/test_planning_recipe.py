"""planner=recipe: a run plans as its recipe's ``planning`` block says; keys given explicitly win;
a bad block is refused when the recipe is read, in one line naming the key."""
import glob
import os

import pytest
import yaml

from trajectory.config import EvalConfig, TrainRunConfig
from trajectory.configutil import ConfigError, build_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "cpu", "*.yaml")))


def run_with_planning(folder, planning=None):
    """A run folder whose checkpoint config carries ``planning`` (None: no block at all)."""
    config = {"name": "tiny", "data": {"source": "halfcheetah-medium"}}
    if planning is not None:
        config["planning"] = planning
    os.makedirs(folder / "checkpoint")
    (folder / "checkpoint" / "config.yaml").write_text(yaml.safe_dump(config))
    return str(folder)


def test_a_recipe_block_is_applied_and_explicit_keys_win(tmp_path):
    from planners.recipe import resolve_planning
    run = run_with_planning(tmp_path / "run", {"planner": "beam", "plan_value": "critic", "beam_steps": 3,
                                               "cdf_act": None})
    cfg, taken = resolve_planning(EvalConfig(checkpoints_path=run))
    assert (cfg.planner, cfg.plan_value, cfg.beam_steps, cfg.cdf_act) == ("beam", "critic", 3, None)
    assert taken == {"planner": "beam", "plan_value": "critic", "beam_steps": 3, "cdf_act": None}
    cfg, taken = resolve_planning(EvalConfig(checkpoints_path=run, beam_steps=5), given={"beam_steps"})
    assert (cfg.planner, cfg.beam_steps) == ("beam", 5) and "beam_steps" not in taken


def test_a_named_planner_ignores_the_recipe(tmp_path):
    from planners.recipe import resolve_planning
    run = run_with_planning(tmp_path / "run", {"planner": "beam", "cdf_act": None})
    cfg = EvalConfig(checkpoints_path=run, planner="policy")
    assert resolve_planning(cfg) == (cfg, {})


def test_a_recipe_that_says_nothing_plans_with_the_critic_planner(tmp_path):
    from planners.recipe import resolve_planning
    for name, planning in (("none", None), ("empty", {}), ("cdf", {"cdf_act": None})):
        run = run_with_planning(tmp_path / name, planning)
        cfg, taken = resolve_planning(EvalConfig(checkpoints_path=run))
        assert cfg.planner == "critic" and taken["planner"] == "critic"
    cfg, _ = resolve_planning(EvalConfig(checkpoints_path=str(tmp_path / "not-trained-yet")))
    assert cfg.planner == "critic"


@pytest.mark.parametrize("planning, named", [
    ({"n_episodes": 5}, "planning.n_episodes is not a planning setting"),
    ({"out": "x"}, "planning.out is not a planning setting"),
    ({"beam_steps": 0}, "beam_steps"),
    ({"cdf_act": 1.5}, "cdf_act"),
    ({"planner": "recipe"}, "names the planner itself"),
])
def test_a_bad_planning_block_is_refused_naming_the_key(planning, named, tmp_path):
    from planners.recipe import recipe_planning
    with pytest.raises(ConfigError, match=named):
        TrainRunConfig(planning=planning)
    run = run_with_planning(tmp_path / "run", planning)  # a saved config edited by hand
    with pytest.raises(ConfigError, match=named):
        recipe_planning(run)


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_every_cpu_recipe_plans_with_a_known_planner(recipe, tmp_path):
    from planners import PLANNER_CATALOG
    from planners.recipe import resolve_planning
    planning = build_config(TrainRunConfig, recipe).planning
    run = run_with_planning(tmp_path / "run", dict(planning))
    cfg, _ = resolve_planning(EvalConfig(checkpoints_path=run))
    assert cfg.planner in PLANNER_CATALOG
    assert all(getattr(cfg, key) == value for key, value in planning.items())


def test_shipped_runs_plan_as_their_recipe_says_today():
    from planners.recipe import recipe_planning
    for checkpoint in sorted(glob.glob(os.path.join(ROOT, "pretrained", "*", "checkpoint"))):
        run = os.path.dirname(checkpoint)
        recipe = os.path.join(ROOT, "configs", "cpu", os.path.basename(run).replace("-medium-", "_medium_")
                              .replace("-cpu", "").replace("-", "_") + ".yaml")
        assert os.path.isfile(recipe), recipe
        assert recipe_planning(run) == dict(build_config(TrainRunConfig, recipe).planning), run


def test_eval_py_applies_the_recipe_and_the_command_line_wins(tmp_path, monkeypatch, capsys):
    import importlib.util

    import planners.rollout
    spec = importlib.util.spec_from_file_location("eval_py", os.path.join(ROOT, "eval.py"))
    eval_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_py)
    run = run_with_planning(tmp_path / "run", {"planner": "policy", "policy_actions": "greedy",
                                               "beam_width": 7})
    seen = []
    monkeypatch.setattr(planners.rollout, "evaluate", lambda cfg: seen.append(cfg))
    base = [f"--config={ROOT}/configs/eval_base.yaml", f"checkpoints_path={run}", f"out={tmp_path / 'out'}"]
    assert eval_py.main([*base, "--beam_width=9"]) == 0
    assert (seen[0].planner, seen[0].policy_actions, seen[0].beam_width) == ("policy", "greedy", 9)
    said = capsys.readouterr().out
    assert "planning as the run's recipe says: planner=policy policy_actions=greedy" in said
    assert eval_py.main([*base, "planner=policy"]) == 0  # a named planner: eval_base.yaml's settings
    assert (seen[1].policy_actions, seen[1].beam_width) == ("median", 32)


def test_the_package_default_is_the_recipe():
    assert EvalConfig().planner == "recipe"
    assert build_config(EvalConfig, os.path.join(ROOT, "configs", "eval_base.yaml")).planner == "recipe"
