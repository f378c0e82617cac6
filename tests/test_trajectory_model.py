import pytest
import torch
import torch.nn.functional as F

from trajectory.config import ModelConfig
from trajectory.configutil import ConfigError
from trajectory.models.cores import CORES
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel

LAYOUT = TokenLayout(obs_dim=3, act_dim=2, vocab=11, seq_len=4)  # transition_dim 7, 28 tokens


def make_model(core: str, **overrides) -> TrajectoryModel:
    torch.manual_seed(0)
    cfg = ModelConfig(core=core, d_model=16, n_layers=2, n_heads=2, dropout=0.0,
                      embedding_dropout=0.0, **overrides)
    return TrajectoryModel(cfg, LAYOUT).eval()


def random_tokens(batch: int = 3) -> torch.Tensor:
    return torch.randint(0, LAYOUT.vocab, (batch, LAYOUT.max_tokens))


@pytest.mark.parametrize("core", sorted(CORES))
@torch.no_grad()
def test_value_tokens_are_never_visible(core):
    model = make_model(core)
    tokens = random_tokens()
    value_positions = torch.arange(LAYOUT.max_tokens) % LAYOUT.transition_dim == LAYOUT.transition_dim - 1
    changed = tokens.clone()
    changed[:, value_positions] = (tokens[:, value_positions] + 5) % LAYOUT.vocab
    assert not torch.equal(changed, tokens)
    torch.testing.assert_close(model(changed), model(tokens), atol=1e-5, rtol=0)
    # while changing an observation token does change later predictions
    other = tokens.clone()
    other[:, 0] = (tokens[:, 0] + 5) % LAYOUT.vocab
    assert not torch.allclose(model(other)[:, 1:], model(tokens)[:, 1:], atol=1e-5)


@pytest.mark.parametrize("core", sorted(CORES))
@torch.no_grad()
def test_step_form_equals_forward_with_per_dimension_heads(core):
    model = make_model(core)
    tokens = random_tokens()
    expected = model(tokens)
    state = model.init_state(tokens.shape[0], tokens.device)
    outs, t = [], 0
    for size in (4, 1, 9, 3, 11):  # chunks that straddle transition boundaries
        logits, state = model.step(tokens[:, t:t + size], state)
        outs.append(logits)
        t += size
    torch.testing.assert_close(torch.cat(outs, 1), expected, atol=1e-4, rtol=0)
    assert state.pos == LAYOUT.max_tokens


def test_loss_weights_action_tokens_and_respects_mask():
    model = make_model("gpt", action_weight=5.0)
    tokens = random_tokens()
    logits = model(tokens)[:, :-1]
    targets, mask = tokens[:, 1:], torch.ones_like(tokens[:, 1:])
    mask[:, 10:] = 0
    loss, groups = model.loss(logits, targets, mask)
    ce = F.cross_entropy(logits.reshape(-1, LAYOUT.vocab), targets.reshape(-1), reduction="none")
    ce = ce.view_as(targets)
    dims = (torch.arange(targets.shape[1]) + 1) % LAYOUT.transition_dim
    is_action = (dims >= LAYOUT.obs_dim) & (dims < LAYOUT.obs_dim + LAYOUT.act_dim)
    weights = torch.where(is_action, 5.0, 1.0)
    expected = (ce * weights * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    obs_sel = (dims < LAYOUT.obs_dim) & (mask[0] > 0)
    torch.testing.assert_close(groups["obs"], ce[:, obs_sel].mean())


def test_unknown_core_names_the_choices():
    with pytest.raises(ConfigError, match="gpt"):
        make_model("mamba")


def test_unknown_core_option_is_an_error():
    with pytest.raises(ConfigError, match="no_such_option"):
        make_model("gpt", core_options={"no_such_option": 1})


@torch.no_grad()
def test_compiled_token_step_matches_the_eager_step_and_leaves_chunks_eager():
    """compile_step routes one-token steps through torch.compile (counted), chunks stay eager, and
    decoding a branched, reordered state gives the eager logits and the same state."""
    import torch._dynamo

    from trajectory.models.trajectory_model import STEP_RECOMPILE_LIMIT
    eager, compiled = make_model("retnet"), make_model("retnet")
    calls = []
    torch._dynamo.config.recompile_limit = 8  # torch's default
    compiled.compile_step()
    # a plan's state forms need more graphs than the default allows; past it the step runs eager
    assert torch._dynamo.config.recompile_limit >= STEP_RECOMPILE_LIMIT
    # another compiled model brings its own graphs to the same code object: the limit grows with it
    before = torch._dynamo.config.recompile_limit
    make_model("gpt").compile_step()
    assert torch._dynamo.config.recompile_limit >= before + STEP_RECOMPILE_LIMIT
    inner = compiled._compiled_token_step
    compiled._compiled_token_step = lambda *args: calls.append(1) or inner(*args)
    tokens = random_tokens(batch=2)
    states = []
    for model in (eager, compiled):
        logits, state = model.step(tokens[:, :9], model.init_state(2, "cpu"))  # a chunk
        state = model.select_state(state, torch.tensor([0, 0, 1, 1, 1]))
        outputs = [logits[:, -1].repeat_interleave(torch.tensor([2, 3]), dim=0)]
        for i in range(9, 14):
            logits, state = model.step(tokens[[0, 0, 1, 1, 1], i:i + 1], state)
            outputs.append(logits[:, -1])
        states.append(state)
        if model is eager:
            expected = torch.stack(outputs)
    assert len(calls) == 5  # the one-token steps only, not the chunk
    torch.testing.assert_close(torch.stack(outputs), expected, atol=1e-5, rtol=0)
    for a, b in zip(states[0].core["S"], states[1].core["S"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with torch.enable_grad():  # training-style calls never take the compiled path
        compiled.step(tokens[:, :1], compiled.init_state(2, "cpu"))
    assert len(calls) == 5


def decode_like_a_planner(model: TrajectoryModel, tokens: torch.Tensor) -> torch.Tensor:
    """Last-token logits of a plan's state forms: a prefilled context shared by its beams, then a
    beam's tokens shared by its copies, then pruning within each environment (which folds them)."""
    logits, state = model.step(tokens[:, :9], model.init_state(2, "cpu"))
    state, rows, outputs = model.branch_state(state, 2), torch.tensor([0, 0, 1, 1]), []
    for i in range(9, 16):
        if i == 12:
            state, rows = model.branch_state(state, 2), rows.repeat_interleave(2)
        if i == 14:
            index = torch.tensor([0, 1, 1, 3, 4, 4, 6, 7])
            state, rows = model.select_state(state, index), rows[index]
        logits, state = model.step(tokens[rows, i:i + 1], state)
        outputs.append(logits[:, -1])
    return torch.cat(outputs)


@pytest.mark.slow
@pytest.mark.parametrize("core", ["gpt", "hyena", "s5"])
@torch.no_grad()
def test_compiled_token_step_follows_shared_prefix_states(core):
    """The typed states of the cores that share a prefix (and a beam's middle), and S5's real-valued
    one-token recurrence, go through the compiled step as the planner drives them, without a graph
    break."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    tokens = random_tokens(batch=2)
    expected = decode_like_a_planner(make_model(core), tokens)
    compiled = make_model(core)
    compiled.compile_step()
    torch.testing.assert_close(decode_like_a_planner(compiled, tokens), expected, atol=1e-5, rtol=0)
    assert not counters["graph_break"]
