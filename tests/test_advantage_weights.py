"""Advantage-weighted action tokens on a synthetic bandit: one state, a good and a bad action taken
equally often; a critic that values the good one. The weights favour it, only action targets carry
them, and a model trained with them proposes the good action more often than one trained without."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _faults import refused_before_torch

from trajectory.config import ModelConfig
from trajectory.data.dataset import WindowDataset
from trajectory.data.discretizer import Discretizer
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel
from trajectory.training.advantage_weights import summary, transition_weights, weights_from_advantages

LAYOUT = TokenLayout(obs_dim=1, act_dim=1, vocab=10, seq_len=2)  # obs, action, reward, value
GOOD, BAD = 8, 1  # action tokens


class BanditCritic:
    """Q(s, a) = a (the action's bin centre), V(s) = 0."""

    def q(self, obs, act):
        return act[:, 0]

    def value(self, obs):
        return torch.zeros(len(obs))


def bandit(episodes: int = 200, steps: int = 4, seed: int = 0):
    """Tokens [N, 4] of episodes whose every step takes the good or the bad action at random, the
    stream's lengths, and a uniform discretizer over [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = episodes * steps
    tokens = np.zeros((n, LAYOUT.transition_dim), dtype=np.uint8)
    tokens[:, 0] = 5
    tokens[:, 1] = np.where(rng.random(n) < 0.5, GOOD, BAD)
    tokens[:, 2], tokens[:, 3] = 4, 4
    discretizer = Discretizer(n_bins=LAYOUT.vocab, strategy="uniform").fit(
        np.random.default_rng(1).uniform(-1, 1, size=(200, LAYOUT.transition_dim)))
    return tokens, np.full(episodes, steps), discretizer


def test_weights_grow_with_the_advantage_are_clipped_and_average_one():
    adv = np.array([0.0, 1.0, 2.0, 3.0])
    weights = weights_from_advantages(adv, beta=1.0, max_weight=100.0)
    assert weights.mean() == pytest.approx(1.0, rel=1e-6)
    ratios = weights[1:] / weights[:-1]
    np.testing.assert_allclose(ratios, np.exp(1.0 / adv.std()), rtol=1e-5)  # exp(beta dA / std A)
    clipped = weights_from_advantages(adv, beta=10.0, max_weight=5.0)
    assert clipped[2] == clipped[3] and clipped[1] < clipped[2]  # the best two meet the cap
    assert clipped[1] / clipped[0] == pytest.approx(np.exp(10.0 / adv.std()), rel=1e-4)  # below it
    assert clipped.mean() == pytest.approx(1.0)
    assert summary(np.ones(4))["effective_share"] == pytest.approx(1.0)
    assert summary(clipped)["effective_share"] < 1.0


def test_the_bandits_good_action_weighs_more_and_padding_keeps_weight_one():
    tokens, lengths, discretizer = bandit(episodes=20)
    dataset = WindowDataset(tokens, lengths, LAYOUT.seq_len)
    weights = transition_weights(dataset.stream, dataset.valid, np.asarray(discretizer.centres), 1, 1,
                                 BanditCritic(), beta=1.0, max_weight=20.0)
    acts = dataset.stream[:, 1]
    good, bad = weights[dataset.valid & (acts == GOOD)], weights[dataset.valid & (acts == BAD)]
    assert good.min() > bad.max() and np.ptp(good) < 1e-5 and np.ptp(bad) < 1e-5
    assert (weights[~dataset.valid] == 1.0).all() and weights[dataset.valid].mean() == pytest.approx(1.0)


def test_only_action_targets_carry_their_transitions_weight():
    tokens, lengths, _ = bandit(episodes=3)
    dataset = WindowDataset(tokens, lengths, LAYOUT.seq_len)
    unweighted = dataset.batch(np.arange(len(dataset)))["mask"]
    row_weights = np.arange(len(dataset.stream), dtype=np.float32) + 2.0  # distinct per row
    dataset.weight_actions(row_weights, slice(1, 2))
    batch = dataset.batch(np.arange(len(dataset)))
    rows = dataset.starts[:, None] + np.arange(LAYOUT.seq_len)
    d = LAYOUT.transition_dim
    for j in range(batch["mask"].shape[1]):  # target j is window token j + 1
        row, dim = (j + 1) // d, (j + 1) % d
        expected = unweighted[:, j] * (torch.from_numpy(row_weights[rows[:, row]]) if dim == 1 else 1.0)
        torch.testing.assert_close(batch["mask"][:, j], expected)
    with pytest.raises(ValueError, match="weights for"):
        dataset.weight_actions(row_weights[:-1], slice(1, 2))


def good_action_probability(weighted: bool, steps: int = 150) -> float:
    """Train a tiny model on the bandit's windows; its probability of the good action at a step."""
    tokens, lengths, discretizer = bandit()
    dataset = WindowDataset(tokens, lengths, LAYOUT.seq_len)
    if weighted:
        centres = np.asarray(discretizer.centres)
        weights = transition_weights(dataset.stream, dataset.valid, centres, 1, 1, BanditCritic(),
                                     beta=2.0, max_weight=20.0)
        dataset.weight_actions(weights, slice(1, 2))
    torch.manual_seed(0)
    model = TrajectoryModel(ModelConfig(core="gpt", d_model=16, n_layers=1, n_heads=2, dropout=0.0,
                                        embedding_dropout=0.0), LAYOUT)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = dataset.batch(rng.integers(0, len(dataset), 64))
        loss, _ = model.loss(model(batch["x"]), batch["y"], batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model(torch.tensor([[5]]))[0, -1]  # the action after the observation token
    probs = logits.softmax(-1)
    return float(probs[GOOD] / (probs[GOOD] + probs[BAD]))


def test_a_model_trained_with_the_weights_proposes_the_good_action_more_often():
    plain, weighted = good_action_probability(False), good_action_probability(True)
    assert abs(plain - 0.5) < 0.15  # the data's own frequency
    assert weighted > plain + 0.2  # exp(2 x 2) ~ 55 times the weight, clipped at 20


def test_weighting_without_a_critic_is_refused(tmp_path):
    code, torch_loaded, stderr = refused_before_torch(
        ["train.py", "--config=configs/cpu/halfcheetah_medium_s5.yaml", f"runs_dir={tmp_path}",
         "train.advantage_beta=1"])  # the run's own critic, not trained yet
    assert code == 2 and not torch_loaded, stderr
    assert "is not there yet: train it first" in stderr and "train_critic.py recipe=" in stderr, stderr
    code, torch_loaded, stderr = refused_before_torch(
        ["train.py", "--config=configs/cpu/halfcheetah_medium_s5.yaml", f"runs_dir={tmp_path}",
         "train.advantage_beta=1", f"train.advantage_critic={tmp_path}/none.pt"])
    assert code == 2 and not torch_loaded and "is not a file: train one on this data" in stderr, stderr


def test_train_py_weights_a_run_by_the_critic_of_another_run_of_the_same_data(tmp_path):
    from _faults import assert_refused, run_cli
    from test_end_to_end import write_halfcheetah_hdf5
    from test_readme_commands import TINY_TRAINING
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=4, steps=30)
    data = [f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}", *TINY_TRAINING,
            f"runs_dir={tmp_path}"]
    assert run_cli(["train.py", *data, "name=first"], cwd=tmp_path).returncode == 0
    critic = run_cli(["train_critic.py", f"run={tmp_path / 'first'}", "hidden=16", "batch_size=8",
                      "steps=20", "held_out_every=10", "log_every=5", "save_every=10"], cwd=tmp_path)
    assert critic.returncode == 0, critic.stderr[-3000:]
    weighting = ["train.advantage_beta=1",
                 f"train.advantage_critic={tmp_path / 'first' / 'critic' / 'critic.pt'}"]
    result = run_cli(["train.py", *data, "name=weighted", *weighting], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "action tokens weighted by" in result.stdout and "effective sample share" in result.stdout
    other = run_cli(["train.py", *data, "name=other", "data.discount=0.9", *weighting], cwd=tmp_path)
    assert_refused(other, "was trained for discount=0.99 but the run")


def test_a_recipe_trains_its_own_critic_first_and_its_model_is_weighted_by_it(tmp_path):
    from _faults import assert_refused, run_cli
    from omegaconf import OmegaConf
    from test_end_to_end import write_halfcheetah_hdf5
    from test_readme_commands import TINY_TRAINING
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=4, steps=30)
    recipe = tmp_path / "recipe.yaml"
    OmegaConf.save(OmegaConf.from_dotlist([
        f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}", *TINY_TRAINING,
        f"runs_dir={tmp_path / 'runs'}", "name=weighted", "train.advantage_beta=1",
        "train.critic_expectile=0.6"]), recipe)
    run = tmp_path / "runs" / "weighted"
    assert_refused(run_cli(["train.py", f"--config={recipe}"], cwd=tmp_path), "train it first")
    critic = run_cli(["train_critic.py", f"recipe={recipe}", "hidden=16", "batch_size=8", "steps=20",
                      "held_out_every=10", "log_every=5", "save_every=10"], cwd=tmp_path)
    assert critic.returncode == 0, critic.stderr[-3000:]
    assert (run / "critic" / "critic.pt").is_file() and not (run / "checkpoint").exists()
    assert json.loads((run / "critic" / "metrics.json").read_text())["expectile"] == 0.6  # the recipe's
    for extra in ([], ["overwrite=true"]):  # a new run over the old one keeps the critic it needs
        result = run_cli(["train.py", f"--config={recipe}", *extra], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"action tokens weighted by {run / 'critic' / 'critic.pt'}" in result.stdout
        assert (run / "checkpoint" / "model.pt").is_file() and (run / "critic" / "critic.pt").is_file()
    # a trained run's critic follows its saved recipe; the command line wins
    for extra, expected in (([], 0.6), (["expectile=0.55"], 0.55)):
        out = tmp_path / f"critic{len(extra)}"
        result = run_cli(["train_critic.py", f"run={run}", f"out={out}", "hidden=16", "batch_size=8",
                          "steps=5", "held_out_every=5", "log_every=5", "save_every=5", *extra], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((out / "metrics.json").read_text())["expectile"] == expected
    # the critic of the trained run plans it: it was trained on the run's data and discount
    from planners import check_planner_inputs
    from trajectory.config import EvalConfig
    check_planner_inputs(EvalConfig(checkpoints_path=str(run), planner="critic"))
