"""The learned critic: implicit Q-learning, its training run, and the planner that ranks by it."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_end_to_end import ROOT, cli, write_halfcheetah_hdf5
from test_planner import SMALL, eval_cfg, fitted_discretizer, tiny_model

from planners import PLANNERS, critic_path
from planners.beam import RecomputingModel
from planners.critic import CriticPlanner
from planners.policy import PolicyPlanner
from trajectory.configutil import ConfigError
from trajectory.data.sources import Transitions
from trajectory.models.critic import ActionValueCritic, expectile_loss, iql_losses, load_critic
from trajectory.training.critic import CriticRunConfig, transition_tensors


def test_expectile_loss_weights_under_and_over_estimates_asymmetrically():
    diff = torch.tensor([2.0, -2.0])
    assert expectile_loss(diff, 0.5) == pytest.approx(2.0)  # plain half squared error
    assert expectile_loss(diff[:1], 0.9) == pytest.approx(0.9 * 4)
    assert expectile_loss(diff[1:], 0.9) == pytest.approx(0.1 * 4)


def bandit_batch(n: int, generator: torch.Generator) -> dict:
    """One-step episodes: reward = the action (one of -0.8, 0, 0.8), whatever the observation."""
    obs = torch.randn(n, 3, generator=generator)
    act = torch.tensor([-0.8, 0.0, 0.8])[torch.randint(0, 3, (n,), generator=generator)][:, None]
    return {"obs": obs, "act": act, "reward": act[:, 0].clone(), "next_obs": obs,
            "not_done": torch.zeros(n)}


@pytest.mark.parametrize("expectile", [0.5, 0.9])
def test_iql_learns_each_action_s_value_and_v_as_the_expectile_over_the_data_s_actions(expectile):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    critic = ActionValueCritic(3, 1, hidden=32)
    critic.set_normalization(torch.randn(500, 3, generator=generator), torch.tensor([-1.0, 1.0]))
    target = copy.deepcopy(critic).requires_grad_(False)
    optim = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(600):
        v_loss, q_loss = iql_losses(critic, target, bandit_batch(128, generator), 0.99, expectile)
        optim.zero_grad()
        (v_loss + q_loss).backward()
        optim.step()
        with torch.no_grad():
            for p, t in zip(critic.q_net.parameters(), target.q_net.parameters()):
                t.lerp_(p, 0.05)
    obs = torch.randn(200, 3, generator=generator)
    with torch.no_grad():
        q = torch.stack([critic.q(obs, torch.full((200, 1), a)) for a in (-0.8, 0.0, 0.8)])
        v = critic.value(obs)
    torch.testing.assert_close(q.mean(1), torch.tensor([-0.8, 0.0, 0.8]), atol=0.08, rtol=0)
    assert (q[2] > q[1]).float().mean() > 0.95 and (q[1] > q[0]).float().mean() > 0.95
    if expectile == 0.5:  # the mean over the data's actions
        assert abs(v.mean().item()) < 0.1
    else:  # leaning to the best of them
        assert v.mean().item() > 0.4


def test_an_ensemble_critic_is_pessimistic_by_its_minimum_or_by_its_spread():
    critic = ActionValueCritic(2, 1, hidden=4, members=4)
    critic.q_members = lambda obs, act: torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [6.0, 5.0]])
    obs, act = torch.zeros(2, 2), torch.zeros(2, 1)
    assert critic.q(obs, act).tolist() == [1.0, 5.0]  # the minimum over members
    spread = torch.tensor([1.0, 2.0, 3.0, 6.0]).std().item()
    assert critic.q(obs, act, std_weight=1.0).tolist() == pytest.approx([3.0 - spread, 5.0])
    assert critic.q(obs, act, std_weight=2.0)[0].item() == pytest.approx(3.0 - 2 * spread)
    with pytest.raises(ConfigError, match="critic_std_weight"):
        eval_cfg(critic_std_weight=-1.0)


def test_transition_tensors_pair_each_step_with_its_next_observation():
    # episode 0: 3 steps cut by the time limit; episode 1: 2 steps, the last a true terminal
    obs = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)
    transitions = Transitions(obs, np.zeros((5, 1), np.float32), np.array([1, 2, 3, 4, 5], np.float32),
                              np.array([0, 0, 0, 0, 1], bool), np.array([0, 0, 1, 0, 0], bool),
                              None, "synthetic")
    data = transition_tensors(transitions, np.array([0, 1]), 0.5, terminal_penalty=-10.0)
    # the cut episode's last step has no next observation and is left out
    assert data.obs[:, 0].tolist() == [0, 1, 3, 4]
    assert data.next_obs[:, 0].tolist() == [1, 2, 4, 4]
    assert data.not_done.tolist() == [1, 1, 1, 0]
    assert data.reward.tolist() == [1, 2, 4, 5 - 10]  # the terminal's penalty, as the model's rewards
    assert data.returns.tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 4 + 0.5 * -5, -5]
    only_second = transition_tensors(transitions, np.array([1]), 0.5, terminal_penalty=0.0)
    assert only_second.obs[:, 0].tolist() == [3, 4]


def test_critic_run_config_rejects_bad_settings():
    with pytest.raises(ConfigError, match="expectile"):
        CriticRunConfig(expectile=1.0)
    with pytest.raises(ConfigError, match="steps"):
        CriticRunConfig(steps=0)


class PreferredAction(torch.nn.Module):
    """A stand-in critic: Q(s, a) = -|a - preferred|^2 (the observation ignored)."""

    def __init__(self, preferred: torch.Tensor, obs_dim: int):
        super().__init__()
        self.preferred, self.obs_dim, self.act_dim = preferred, obs_dim, len(preferred)
        self.seen_obs = None

    def q(self, obs, act):
        self.seen_obs = obs
        return -(act - self.preferred).square().sum(-1)


def contexts(envs: int, seed: int) -> torch.Tensor:
    return torch.randint(0, SMALL.vocab, (envs, 2 * SMALL.transition_dim + SMALL.obs_dim),
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("core", ["gpt", "hyena", "retnet", "s5"])
def test_critic_planner_takes_the_candidate_the_critic_values_most(core):
    model, disc = tiny_model(core, SMALL), fitted_discretizer(SMALL)
    context = contexts(3, 4)  # environments with different contexts: no mixing of prefixes
    o, a = SMALL.obs_dim, SMALL.act_dim
    critic = PreferredAction(torch.full((a,), 0.7), o)
    cfg = eval_cfg(planner="critic", beam_width=6, cdf_act=0.95)
    plan = CriticPlanner(model, disc, SMALL, cfg, torch.Generator().manual_seed(5), critic).plan(context)
    reference = CriticPlanner(RecomputingModel(model), disc, SMALL, cfg, torch.Generator().manual_seed(5),
                              critic).plan(context)
    assert torch.equal(plan.actions, reference.actions)
    # the critic saw each env's current observation (bin centres of its tokens) once per candidate
    centres = torch.as_tensor(disc.centres, dtype=torch.float32)
    observed = centres[torch.arange(o), context[:, -o:]]
    torch.testing.assert_close(critic.seen_obs, observed.repeat_interleave(6, dim=0))
    # the chosen action is the best of the candidates: none of the 6 the planner drew scores higher
    chosen = centres[o + torch.arange(a), plan.actions[:, 0]]
    torch.testing.assert_close(plan.score, critic.q(None, chosen))
    planner = CriticPlanner(model, disc, SMALL, cfg, torch.Generator().manual_seed(5), critic)
    all_q = []
    real_q = critic.q
    critic.q = lambda obs, act: all_q.append(real_q(obs, act)) or real_q(obs, act)
    planner.plan(context)
    assert torch.equal(plan.score, all_q[0].view(3, 6).max(dim=1).values)
    assert (all_q[0].view(3, 6).std(dim=1) > 0).all()  # the candidates differ


def test_one_candidate_is_the_model_s_median_action_and_the_planner_is_registered():
    model, disc = tiny_model("s5", SMALL), fitted_discretizer(SMALL)
    context = contexts(4, 5)
    critic = PreferredAction(torch.zeros(SMALL.act_dim), SMALL.obs_dim)
    plan = CriticPlanner(model, disc, SMALL, eval_cfg(planner="critic", beam_width=1), None,
                         critic).plan(context)
    policy = PolicyPlanner(model, disc, SMALL, eval_cfg(planner="policy")).plan(context)
    assert torch.equal(plan.actions, policy.actions)
    torch.testing.assert_close(plan.rewards, policy.rewards)
    assert PLANNERS["critic"] is CriticPlanner


@pytest.mark.parametrize("core", ["s5", "gpt"])
def test_a_one_step_beam_valued_by_the_critic_takes_the_critic_planner_s_choice(core):
    from planners.beam import BeamPlanner
    model, disc = tiny_model(core, SMALL), fitted_discretizer(SMALL)
    context = contexts(3, 6)
    critic = PreferredAction(torch.full((SMALL.act_dim,), 0.3), SMALL.obs_dim)
    one_step = dict(beam_width=6, sample_expand=1, beam_steps=1, cdf_act=0.95)
    ranked = CriticPlanner(model, disc, SMALL, eval_cfg(planner="critic", **one_step),
                           torch.Generator().manual_seed(2), critic).plan(context)
    beam = BeamPlanner(model, disc, SMALL, eval_cfg(planner="beam", plan_value="critic", **one_step),
                       torch.Generator().manual_seed(2), critic).plan(context)
    assert torch.equal(beam.actions, ranked.actions)
    torch.testing.assert_close(beam.score, ranked.score)


class ConstantCritic(torch.nn.Module):
    def __init__(self, value: float, obs_dim: int, act_dim: int):
        super().__init__()
        self.value_, self.obs_dim, self.act_dim = value, obs_dim, act_dim

    def q(self, obs, act):
        return torch.full((len(act),), self.value_)


def test_a_deeper_plan_valued_by_the_critic_adds_the_predicted_rewards_before_its_last_action():
    from planners.beam import BeamPlanner
    model, disc = tiny_model("s5", SMALL), fitted_discretizer(SMALL)
    cfg = eval_cfg(planner="beam", plan_value="critic", beam_width=3, beam_steps=3)
    plan = BeamPlanner(model, disc, SMALL, cfg, torch.Generator().manual_seed(0),
                       ConstantCritic(7.0, SMALL.obs_dim, SMALL.act_dim)).plan(contexts(2, 7))
    gamma = cfg.discount
    expected = plan.rewards[:, 0] + gamma * plan.rewards[:, 1] + gamma ** 2 * 7.0
    torch.testing.assert_close(plan.score, expected)
    # the model's value token plays no part: the same plan with the value read as TT reads it differs
    tt = BeamPlanner(model, disc, SMALL, eval_cfg(planner="beam", beam_width=3, beam_steps=3),
                     torch.Generator().manual_seed(0)).plan(contexts(2, 7))
    assert not torch.allclose(tt.score, plan.score)


def test_critic_path_defaults_beside_the_run_and_missing_or_corrupt_critics_name_the_fix(tmp_path):
    assert critic_path(eval_cfg(checkpoints_path="runs/x")) == os.path.join("runs/x", "critic", "critic.pt")
    assert critic_path(eval_cfg(checkpoints_path="runs/x/checkpoint/")) == os.path.join(
        "runs/x", "critic", "critic.pt")
    assert critic_path(eval_cfg(checkpoints_path="runs/x", critic="elsewhere.pt")) == "elsewhere.pt"
    with pytest.raises(ConfigError, match="train_critic.py"):
        load_critic(str(tmp_path / "none.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="bad.pt: the file is truncated, corrupt.*overwrite=true"):
        load_critic(str(tmp_path / "bad.pt"))


def test_train_critic_resumes_exactly_and_eval_plans_with_it(tmp_path):
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=4, steps=30)
    cli([os.path.join(ROOT, "train.py"), f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}",
         "data.seq_len=4", "data.n_bins=16", "data.holdout_fraction=0.25", "model.core=s5",
         "model.d_model=16", "model.n_layers=1", "train.batch_size=8", "train.max_tokens=1000",
         f"runs_dir={tmp_path / 'runs'}", "name=tiny"], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    common = [os.path.join(ROOT, "train_critic.py"), f"run={run_dir}", "hidden=16", "batch_size=8",
              "log_every=5", "save_every=10", "held_out_every=10"]
    cli([*common, "steps=20"], cwd=tmp_path)
    cli([*common, "steps=40", "resume=true"], cwd=tmp_path)
    cli([*common, "steps=40", f"out={tmp_path / 'straight'}"], cwd=tmp_path)
    resumed = torch.load(run_dir / "critic" / "critic.pt")
    straight = torch.load(tmp_path / "straight" / "critic.pt")
    assert resumed["step"] == straight["step"] == 40
    for name, tensor in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], tensor, rtol=0, atol=0, msg=name)
    metrics = json.loads((run_dir / "critic" / "metrics.json").read_text())
    assert metrics["stop_reason"] == "steps" and np.isfinite(metrics["held_out"]["td_rmse"])
    assert (run_dir / "critic" / "tb").is_dir()
    # a second start without resume/overwrite is refused, naming both
    refused = subprocess.run([sys.executable, *common, "steps=40"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "resume=true" in refused.stderr and "overwrite=true" in refused.stderr
    cli([os.path.join(ROOT, "eval.py"), f"--config={ROOT}/configs/eval_base.yaml", "--device=cpu",
         f"checkpoints_path={run_dir}", "planner=critic", "beam_width=3", "n_episodes=2",
         "max_episode_steps=3", "beam_context=1"], cwd=tmp_path)
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["episode_lengths"] == [3, 3]
    assert report["planner_info"] == {"critic": os.path.join(str(run_dir), "critic", "critic.pt"),
                                      "expectile": 0.7, "step": 40, "discount": 0.99}
