"""The no-search policy, the planner registry, and what the beam search ranks plans by."""
import numpy as np
import pytest
import torch
from test_planner import SMALL, eval_cfg, fitted_discretizer, tiny_model

from planners import PLANNERS, build_planner
from planners.beam import BeamPlanner, observed_log_likelihood
from planners.estimates import read_scalar
from planners.policy import PolicyPlanner
from trajectory.configutil import ConfigError
from trajectory.models.cores import CORES


def greedy_reference(model, context, layout):
    """Most likely action tokens, one dimension at a time, by re-running the whole sequence."""
    seq = context.clone()
    for _ in range(layout.act_dim):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, context.shape[1]:]


@pytest.mark.parametrize("core", sorted(CORES))
def test_greedy_policy_takes_the_most_likely_action(core):
    model, disc = tiny_model(core, SMALL), fitted_discretizer(SMALL)
    cfg = eval_cfg(planner="policy", policy_actions="greedy")
    context = torch.randint(0, SMALL.vocab, (4, 2 * SMALL.transition_dim + SMALL.obs_dim),
                            generator=torch.Generator().manual_seed(1))
    plan = PolicyPlanner(model, disc, SMALL, cfg).plan(context)
    assert plan.actions.shape == (4, 1, SMALL.act_dim)
    assert torch.equal(plan.actions[:, 0], greedy_reference(model, context, SMALL))
    # its log-likelihood is that of the argmax tokens under the model
    assert (plan.log_likelihood <= 0).all() and torch.isfinite(plan.observed_log_likelihood).all()


def test_sampled_policy_varies_and_respects_the_cdf_filter():
    model, disc = tiny_model("gpt", SMALL), fitted_discretizer(SMALL)
    context = torch.zeros(64, SMALL.obs_dim, dtype=torch.long)
    sampled = PolicyPlanner(model, disc, SMALL, eval_cfg(planner="policy", policy_actions="sample",
                                                          cdf_act=None),
                            torch.Generator().manual_seed(0)).plan(context)
    assert len({tuple(a) for a in sampled.actions[:, 0].tolist()}) > 1
    greedy = PolicyPlanner(model, disc, SMALL, eval_cfg(planner="policy")).plan(context)
    assert len({tuple(a) for a in greedy.actions[:, 0].tolist()}) == 1
    assert torch.isnan(greedy.observed_log_likelihood).all()  # no past to condition on


def test_planner_registry():
    assert set(PLANNERS) >= {"beam", "policy"}
    model, disc = tiny_model("s5", SMALL), fitted_discretizer(SMALL)
    assert isinstance(build_planner(model, disc, SMALL, eval_cfg()), BeamPlanner)
    with pytest.raises(ConfigError, match="unknown planner 'greedy'.*critic, beam, policy"):
        build_planner(model, disc, SMALL, eval_cfg(planner="greedy"))


def test_expectation_reading_of_a_distribution():
    disc = fitted_discretizer(SMALL, low=0.0, high=12.0)  # 12 bins of width 1
    centres = torch.as_tensor(disc.centres[0], dtype=torch.float32)
    probs = torch.zeros(2, SMALL.vocab)
    probs[0, [2, 9]] = 0.5  # half the mass low, half high
    probs[1, 5] = 1.0  # certain
    mean = read_scalar(probs.clamp_min(1e-12).log(), disc, 0)
    torch.testing.assert_close(mean, torch.stack([(centres[2] + centres[9]) / 2, centres[5]]),
                               atol=1e-4, rtol=0)


def test_beam_score_is_the_discounted_rewards_plus_the_discounted_value():
    model, disc = tiny_model("s5", SMALL), fitted_discretizer(SMALL)
    context = torch.randint(0, SMALL.vocab, (3, SMALL.transition_dim + SMALL.obs_dim),
                            generator=torch.Generator().manual_seed(2))
    plan = BeamPlanner(model, disc, SMALL, eval_cfg(), torch.Generator().manual_seed(5)).plan(context)
    discounts = 0.99 ** torch.arange(plan.rewards.shape[1] + 1, dtype=torch.float32)
    estimate = (plan.rewards * discounts[:-1]).sum(-1) + plan.value * discounts[-1]
    torch.testing.assert_close(plan.score, estimate, atol=1e-4, rtol=1e-5)
    assert (plan.log_likelihood < 0).all()  # reported for the failure diagnostics


def test_observed_log_likelihood_reads_the_prefill():
    obs_dim, vocab = 2, 5
    context = torch.tensor([[1, 2, 3, 4, 0]])  # ..., then observation tokens [4, 0]
    logits = torch.zeros(1, 5, vocab)
    logits[0, 2, 4] = 10.0  # position 2 predicts token 3 (4): confident and right
    logits[0, 3, 1] = 10.0  # position 3 predicts token 4 (0): confident and wrong
    got = observed_log_likelihood(logits, context, obs_dim)
    expected = (torch.log_softmax(logits[0, 2], -1)[4] + torch.log_softmax(logits[0, 3], -1)[0]) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert np.isnan(observed_log_likelihood(logits[:, :2], context[:, :2], obs_dim).item())


def median_reference(model, context, layout):
    """Median action tokens, one dimension at a time, by re-running the whole sequence."""
    seq = context.clone()
    for _ in range(layout.act_dim):
        cumulative = model(seq)[:, -1].float().softmax(-1).cumsum(-1)
        seq = torch.cat([seq, (cumulative < 0.5).sum(-1, keepdim=True)], dim=1)
    return seq[:, context.shape[1]:]


@pytest.mark.parametrize("core", ["gpt", "s5"])
def test_median_policy_takes_each_dimensions_median_given_the_ones_before(core):
    model, disc = tiny_model(core, SMALL), fitted_discretizer(SMALL)
    context = torch.randint(0, SMALL.vocab, (6, 2 * SMALL.transition_dim + SMALL.obs_dim),
                            generator=torch.Generator().manual_seed(2))
    cfg = eval_cfg(planner="policy", policy_actions="median")
    plan = PolicyPlanner(model, disc, SMALL, cfg).plan(context)
    assert torch.equal(plan.actions[:, 0], median_reference(model, context, SMALL))
    greedy_cfg = eval_cfg(planner="policy", policy_actions="greedy")
    greedy = PolicyPlanner(model, disc, SMALL, greedy_cfg).plan(context)
    assert not torch.equal(plan.actions, greedy.actions)  # an untrained model's mode is elsewhere
    default = PolicyPlanner(model, disc, SMALL, eval_cfg(planner="policy")).plan(context)
    assert torch.equal(default.actions, plan.actions)  # the median is the default


def test_policy_actions_setting_is_checked():
    from trajectory.config import EvalConfig
    with pytest.raises(ConfigError, match="greedy, median, sample"):
        EvalConfig(policy_actions="mode")


def test_averaged_first_actions_go_from_the_best_beams_to_the_plain_mean():
    import dataclasses

    from planners.beam import plan_actions
    model, disc = tiny_model("s5", SMALL), fitted_discretizer(SMALL)
    o, a = SMALL.obs_dim, SMALL.act_dim
    context = torch.randint(0, SMALL.vocab, (3, SMALL.transition_dim + SMALL.obs_dim),
                            generator=torch.Generator().manual_seed(5))
    settings = dict(beam_width=4, sample_expand=2, beam_steps=2)
    cold = BeamPlanner(model, disc, SMALL, eval_cfg(**settings, average_actions=1e-6),
                       torch.Generator().manual_seed(0)).plan(context)
    best = disc.decode(cold.actions[:, 0].numpy(), dims=slice(o, o + a))
    np.testing.assert_allclose(cold.first_action.numpy(), best, rtol=0, atol=1e-5)
    tokens, actions = plan_actions(cold, disc, o)  # what the rollout sends and records
    np.testing.assert_array_equal(tokens, cold.actions[:, 0].numpy())
    np.testing.assert_allclose(actions, best, atol=1e-5)

    # the weighting on its own: two envs, three beams each
    planner = BeamPlanner(model, disc, SMALL, eval_cfg(average_actions=1.0))
    first = torch.tensor([[1] * a, [5] * a, [9] * a] * 2)
    score = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    averaged = planner._average_first_action(first, score, envs=2)
    centres = torch.as_tensor(disc.centres[o:o + a], dtype=torch.float32)
    values = centres[:, [1, 5, 9]].t()  # [3 beams, A]
    weights = torch.softmax(torch.tensor([0.0, 1.0, 2.0]) / 1.0, 0)  # the scores' std is 1
    torch.testing.assert_close(averaged[0], (weights[:, None] * values).sum(0))
    torch.testing.assert_close(averaged[1], values.mean(0))  # equal scores: the plain mean
    # a plan without averaged actions acts on its tokens' bin centres, at any offset
    tokens, actions = plan_actions(dataclasses.replace(cold, first_action=None), disc, o, offset=1)
    np.testing.assert_array_equal(tokens, cold.actions[:, 1].numpy())
    np.testing.assert_allclose(actions, disc.decode(tokens, dims=slice(o, o + a)), atol=1e-6)
    with pytest.raises(ConfigError, match="average_actions must be at least 0"):
        eval_cfg(average_actions=-1.0)
