"""The lookahead planner: candidate first actions, each followed by the median policy in the model."""
import pytest
import torch
from test_planner import SMALL, eval_cfg, fitted_discretizer, tiny_model

from planners import PLANNERS, build_planner
from planners.beam import RecomputingModel
from planners.lookahead import LookaheadPlanner, imagine
from planners.policy import PolicyPlanner


def context_of(envs: int, seed: int) -> torch.Tensor:
    return torch.randint(0, SMALL.vocab, (envs, 2 * SMALL.transition_dim + SMALL.obs_dim),
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("core", ["gpt", "s5"])
def test_one_candidate_is_the_median_policy_followed_in_the_model(core):
    model, disc = tiny_model(core, SMALL), fitted_discretizer(SMALL)
    context = context_of(5, 1)
    cfg = eval_cfg(planner="lookahead", beam_width=1, beam_steps=2)
    plan = LookaheadPlanner(model, disc, SMALL, cfg, torch.Generator().manual_seed(0)).plan(context)
    policy = PolicyPlanner(model, disc, SMALL, eval_cfg(planner="policy")).plan(context)
    assert torch.equal(plan.actions[:, 0], policy.actions[:, 0])
    assert plan.actions.shape == (5, 2, SMALL.act_dim) and plan.rewards.shape == (5, 2)
    # its score: discounted predicted rewards plus the discounted value after them
    expected = plan.rewards[:, 0] + cfg.discount * plan.rewards[:, 1] + cfg.discount ** 2 * plan.value
    torch.testing.assert_close(plan.score, expected)


@pytest.mark.parametrize("core", ["gpt", "hyena", "retnet", "s5"])
def test_lookahead_picks_the_best_imagined_candidate_and_matches_re_running_the_sequence(core):
    model, disc = tiny_model(core, SMALL), fitted_discretizer(SMALL)
    context = context_of(3, 2)  # environments with different contexts: no mixing of prefixes
    cfg = eval_cfg(planner="lookahead", beam_width=6, beam_steps=2, cdf_act=0.9)
    plan = LookaheadPlanner(model, disc, SMALL, cfg, torch.Generator().manual_seed(3)).plan(context)
    reference = LookaheadPlanner(RecomputingModel(model), disc, SMALL, cfg,
                                 torch.Generator().manual_seed(3)).plan(context)
    assert torch.equal(plan.actions, reference.actions)
    torch.testing.assert_close(plan.score, reference.score, atol=1e-4, rtol=1e-4)

    planner = LookaheadPlanner(model, disc, SMALL, cfg, torch.Generator().manual_seed(3))
    every = imagine(model, disc, SMALL, cfg, context, 6, planner._first_token, planner.generator)
    scores = every["score"].view(3, 6)
    torch.testing.assert_close(plan.score, scores.max(dim=1).values)
    first = every["actions"][:, 0].view(3, 6, -1)
    assert len({tuple(a.tolist()) for a in first[0]}) > 1  # candidates differ in their first action
    # candidate 0 of every env is the median action; every later action is the median one too
    median_policy = PolicyPlanner(model, disc, SMALL, eval_cfg(planner="policy")).plan(context)
    assert torch.equal(first[:, 0], median_policy.actions[:, 0])
    forced = every["actions"][:, 0]
    again = imagine(model, disc, SMALL, cfg, context, 6, lambda j, logits: forced[:, j])
    assert torch.equal(again["actions"], every["actions"])  # nothing after the first action is drawn
    torch.testing.assert_close(again["score"], every["score"])


def test_lookahead_is_a_registered_planner():
    assert PLANNERS["lookahead"] is LookaheadPlanner
    model, disc = tiny_model("s5", SMALL), fitted_discretizer(SMALL)
    planner = build_planner(model, disc, SMALL, eval_cfg(planner="lookahead", beam_steps=3))
    assert isinstance(planner, LookaheadPlanner) and planner.context_transitions >= 1
