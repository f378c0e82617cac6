"""The planner's token filters and draws: the fast CPU paths against plain torch references."""
import pytest
import torch

import planners.sampling as sampling
from planners.beam import token_log_prob
from planners.sampling import filter_cdf, filter_cdf_by_sorting, greedy, sample


@pytest.mark.parametrize("path", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cdf", [0.05, 0.6, 0.95, 0.999])
def test_cdf_filter_drops_what_the_sorted_definition_drops(monkeypatch, path, dtype, cdf):
    if path == "torch":  # the path of GPU tensors and of dtypes numpy cannot read
        monkeypatch.setattr(sampling, "_numpy_view", lambda x: None)
    torch.manual_seed(0)
    logits = (3 * torch.randn(500, 37)).to(dtype)
    logits[::7, 5:] = float("-inf")  # rows already cut by top-k: zero probabilities
    kept = torch.isfinite(filter_cdf(logits, cdf))
    assert torch.equal(kept, torch.isfinite(filter_cdf_by_sorting(logits, cdf)))
    assert kept[torch.arange(500), logits.argmax(-1)].all()


def test_cdf_filter_keeps_ties_at_the_boundary_together():
    logits = torch.log(torch.tensor([[0.3, 0.3, 0.4]]))  # the tail 0.3 < 0.5, 0.3 + 0.3 is not
    kept = torch.isfinite(filter_cdf(logits, 0.5))
    assert kept.tolist() == [[True, True, True]]  # the second 0.3 is as likely as a kept one


def test_greedy_is_torch_argmax_with_its_tie_rule_on_any_layout():
    torch.manual_seed(1)
    logits = torch.randint(0, 4, (300, 50)).float()  # many ties: the first maximum wins
    for x in (logits, logits.t().contiguous().t(), logits[:, ::2], logits.double(), logits.bfloat16()):
        assert torch.equal(greedy(x), x.argmax(-1))
        assert greedy(x).dtype == torch.long


def test_draws_never_pick_a_filtered_token_even_at_the_bottom_of_the_unit_interval(monkeypatch):
    logits = torch.log(torch.tensor([[0.05, 0.15, 0.3, 0.5]] * 4))
    real_rand = torch.rand
    monkeypatch.setattr(sampling.torch, "rand",
                        lambda *shape, **kw: real_rand(*shape, **kw).zero_())  # u = 0 exactly
    assert sample(logits, torch.Generator().manual_seed(0), cdf=0.6).tolist() == [3] * 4
    assert sample(logits, torch.Generator().manual_seed(0)).tolist() == [0] * 4  # unfiltered


def test_draws_follow_the_kept_tokens_renormalized():
    logits = torch.log(torch.tensor([[0.05, 0.15, 0.3, 0.5]])).expand(40000, 4)
    draws = sample(logits, torch.Generator().manual_seed(0), cdf=0.1)  # drops only the 0.05 token
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    expected = torch.tensor([0.0, 0.15, 0.3, 0.5], dtype=torch.float64) / 0.95
    assert torch.allclose(freq, expected, atol=0.01)


def test_token_log_prob_is_the_log_softmax_entry():
    torch.manual_seed(2)
    logits, token = 5 * torch.randn(64, 30), torch.randint(0, 30, (64,))
    expected = logits.log_softmax(-1)[torch.arange(64), token]
    assert torch.allclose(token_log_prob(logits, token), expected, atol=1e-5)


def test_median_is_the_first_token_whose_cumulative_probability_reaches_one_half():
    from planners.sampling import median
    probs = torch.tensor([[0.1, 0.3, 0.2, 0.4],    # cumulative 0.1, 0.4, 0.6: the median is 2, the mode 3
                          [0.5, 0.0, 0.0, 0.5],    # exactly 1/2 at the first token
                          [0.0, 0.0, 0.05, 0.95]])
    tokens = median(probs.clamp_min(1e-12).log())
    assert tokens.tolist() == [2, 0, 3]
    assert greedy(probs.log())[0] == 3  # the mode is not the median
