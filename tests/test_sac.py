import json
import os

import pytest
import torch

from trajectory.behaviour.config import SACConfig
from trajectory.behaviour.policy import evaluate, load_policy, save_policy
from trajectory.behaviour.reproductions import REPRODUCTIONS
from trajectory.behaviour.sac import SACAgent, train


def test_every_reproduction_ships_its_behaviour_policy_card_and_curve():
    for name, repro in REPRODUCTIONS.items():
        stem = os.path.splitext(repro.policy)[0]
        for path in (repro.policy, stem + ".json", stem + "_training_evals.jsonl"):
            assert os.path.isfile(path), f"{name}: {path} is missing"


def _one_update(member1_reward: float) -> SACAgent:
    torch.manual_seed(0)
    agent = SACAgent(SACConfig(members=2, hidden=16, batch_size=8), obs_dim=3, act_dim=2, device="cpu")
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(2, 8, generator=g)
    rewards[1] = member1_reward
    batch = (torch.randn(2, 8, 3, generator=g), torch.rand(2, 8, 2, generator=g) * 2 - 1, rewards,
             torch.randn(2, 8, 3, generator=g), torch.zeros(2, 8))
    agent.update(batch)
    return agent


def test_population_members_learn_independently():
    """One batched update serves all members; member 0 must not see member 1's data."""
    a, b = _one_update(0.0), _one_update(100.0)
    for net_a, net_b in ((a.actor, b.actor), (a.critic, b.critic)):
        for (name, x), (_, y) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
            first = slice(0, 1) if net_a is a.actor else slice(0, 2)
            assert torch.equal(x[first], y[first]), name  # member 0 untouched by member 1's data
    # member 1's critic did learn from its own (different) rewards
    assert not torch.equal(a.critic.net[4].bias[2:], b.critic.net[4].bias[2:])


def test_short_training_run_writes_logs_and_policies_roundtrip(tmp_path):
    cfg = SACConfig(out=str(tmp_path / "sac"), members=2, hidden=16, max_steps=120, random_steps=60,
                    batch_size=16, eval_every=120, eval_episodes=1, target_low=-1e9, target_high=1e9)
    summary = train(cfg)
    assert summary["steps"] == 120 and set(summary["first_in_range"]) == {0, 1}
    evals = [json.loads(line) for line in open(tmp_path / "sac" / "evals.jsonl")]
    assert evals[0]["step"] == 120 and len(evals[0]["mean_return"]) == 2
    snapshot = tmp_path / "sac" / "candidates" / "member1_step120.pt"
    actor = load_policy(str(snapshot))
    obs = torch.randn(1, 4, 17)
    action = actor.act(obs, deterministic=True)
    assert action.shape == (1, 4, 6) and action.abs().max() <= 1
    copy = tmp_path / "copy.pt"
    payload = torch.load(snapshot, weights_only=True)
    save_policy(str(copy), payload["state_dict"], 17, 6, 16, payload["meta"])
    torch.testing.assert_close(load_policy(str(copy)).act(obs, True), action)


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_committed_behaviour_policy_matches_its_card(name):
    """Statistical: the card's whole evaluation (its episodes and seeds) run again, compared by its mean.

    A hopper or walker episode replayed on another CPU is another episode (MuJoCo and the policy's
    products round differently, and a walker that falls one step earlier loses its tail), so no
    single return is compared: the mean of the card's episodes must land within three standard
    errors of the difference of two such means, which a policy other than the card's misses.
    """
    repro = REPRODUCTIONS[name]
    card = json.load(open(os.path.splitext(repro.policy)[0] + ".json"))
    assert card["env_id"] == repro.env_id
    actor = load_policy(repro.policy)
    n = card["episodes"]
    returns = evaluate(actor, card["env_id"], episodes=n, seed=card["eval_seed"], device="cpu")[0]
    spread = card["deterministic"]["std"]
    assert abs(returns.mean() - card["deterministic"]["mean"]) < 3 * spread * (2 / n) ** 0.5 + 1.0


def test_a_run_saves_refuses_to_restart_over_itself_and_resumes(tmp_path):
    import pytest

    from trajectory.configutil import ConfigError
    base = dict(out=str(tmp_path / "sac"), members=1, hidden=16, random_steps=30, batch_size=8,
                eval_every=40, eval_episodes=1, target_low=-1e9, target_high=1e9, save_every=40,
                stop_when_all_in_range=False, env_id="Hopper-v5")
    train(SACConfig(**base, max_steps=80))
    progress = json.load(open(tmp_path / "sac" / "checkpoint" / "progress.json"))
    assert progress["step"] == 80 and progress["buffer_size"] == 80
    saved = torch.load(tmp_path / "sac" / "checkpoint" / "state.pt", weights_only=True)
    with pytest.raises(ConfigError, match="already holds a SAC run: pass resume=true"):
        train(SACConfig(**base, max_steps=120))
    with pytest.raises(ConfigError, match="hidden was 16, now 32"):
        train(SACConfig(**{**base, "hidden": 32}, max_steps=120, resume=True))
    with pytest.raises(ConfigError, match="does not exist"):
        train(SACConfig(**{**base, "out": str(tmp_path / "other")}, max_steps=120, resume=True))
    summary = train(SACConfig(**base, max_steps=100, resume=True))  # 20 more steps, then a last save
    assert summary["steps"] == 100
    state = torch.load(tmp_path / "sac" / "checkpoint" / "state.pt", weights_only=True)
    # the replay buffer kept the first 80 transitions and appended 20
    assert state["buffer"]["obs"].shape[1] == 100
    torch.testing.assert_close(state["buffer"]["obs"][:, :80], saved["buffer"]["obs"])
    assert not torch.equal(state["actor"]["net.0.weight"], saved["actor"]["net.0.weight"])  # it trained
    assert json.load(open(tmp_path / "sac" / "checkpoint" / "progress.json"))["step"] == 100
    steps = [json.loads(line)["step"] for line in open(tmp_path / "sac" / "evals.jsonl")]
    assert steps == [40, 80]  # the resumed part evaluates on its own schedule (next: 120)
