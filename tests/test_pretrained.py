"""The runs shipped under pretrained/: each loads, its critic fits it, and it plans a few steps with
the default planner and with the one its headline row used."""
import glob
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "pretrained", "*", "checkpoint")))


def test_every_environment_of_the_headline_that_has_a_shipped_run_documents_it():
    assert SHIPPED, "pretrained/ holds no run"
    readme = open(os.path.join(ROOT, "pretrained", "README.md")).read()
    for checkpoint in SHIPPED:
        assert os.path.basename(os.path.dirname(checkpoint)) in readme


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_a_shipped_run_loads_its_critic_fits_and_it_plans(checkpoint, tmp_path):
    from planners.rollout import evaluate
    from trajectory.checkpoint import load_checkpoint
    from trajectory.config import EvalConfig
    from trajectory.models.critic import load_critic
    run = os.path.dirname(checkpoint)
    saved = load_checkpoint(run)
    critic = load_critic(os.path.join(run, "critic", "critic.pt"))
    assert (critic.obs_dim, critic.act_dim) == (saved.layout.obs_dim, saved.layout.act_dim)
    assert critic.training_info["discount"] == saved.config.data.discount
    assert saved.config.runs_dir == "runs" and saved.config.data.cache_dir == "data"  # no host paths
    for name, settings in (("critic", dict(planner="critic", beam_width=4)),
                           ("beam", dict(planner="beam", plan_value="critic", beam_steps=2, beam_width=4,
                                         critic_std_weight=4.0))):
        cfg = EvalConfig(checkpoints_path=run, n_episodes=2, max_episode_steps=4, seed=1000,
                         out=str(tmp_path / name), threads=1, **settings)
        evaluate(cfg)
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["episode_lengths"] == [4, 4] and np.isfinite(report["returns"]).all()
        assert report["planner_info"]["critic"].endswith(os.path.join("critic", "critic.pt"))
