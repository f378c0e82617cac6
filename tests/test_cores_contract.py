"""The SequenceCore contract, checked for every registered core (a new core is tested by registering it)."""
import pytest
import torch

from trajectory.models.cores import CORES, CoreConfig, ResetsUnsupported, build_core

D, T, B = 32, 24, 3
ATOL = 1e-4


def make_core(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=D, n_layers=2, n_heads=4, max_len=64, dropout=0.0, **overrides)
    return build_core(name, cfg).eval()


def run_steps(core, x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    state = core.init_state(x.shape[0], x.device, x.dtype)
    outs, t = [], 0
    for size in chunks:
        y, state = core.step(x[:, t:t + size], state)
        outs.append(y)
        t += size
    assert t == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.fixture(params=sorted(CORES))
def core_name(request):
    return request.param


@torch.no_grad()
def test_step_equals_forward_one_token_at_a_time(core_name):
    core = make_core(core_name)
    x = torch.randn(B, T, D)
    y_parallel = core(x)
    assert y_parallel.shape == (B, T, D)
    torch.testing.assert_close(run_steps(core, x, [1] * T), y_parallel, atol=ATOL, rtol=0)


@torch.no_grad()
def test_step_equals_forward_in_uneven_chunks(core_name):
    core = make_core(core_name)
    x = torch.randn(B, T, D)
    torch.testing.assert_close(run_steps(core, x, [5, 1, 7, 2, 9]), core(x), atol=ATOL, rtol=0)


@torch.no_grad()
def test_select_state_reorders_and_duplicates_rows(core_name):
    core = make_core(core_name)
    x = torch.randn(B, T, D)
    prefix, suffix = x[:, :10], x[:, 10:]
    state = core.init_state(B, x.device, x.dtype)
    _, state = core.step(prefix, state)
    index = torch.tensor([2, 0, 0, 1, 2])
    state = core.select_state(state, index)
    y_suffix, _ = core.step(suffix[index], state)
    expected = core(x[index])[:, 10:]
    torch.testing.assert_close(y_suffix, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_causal(core_name):
    core = make_core(core_name)
    x = torch.randn(B, T, D)
    changed = x.clone()
    changed[:, 15:] = torch.randn(B, T - 15, D)
    torch.testing.assert_close(core(changed)[:, :15], core(x)[:, :15], atol=ATOL, rtol=0)
    assert not torch.allclose(core(changed)[:, 15:], core(x)[:, 15:], atol=ATOL)


@torch.no_grad()
def test_resets_equal_separate_episodes(core_name):
    core = make_core(core_name)
    first, second = torch.randn(B, 9, D), torch.randn(B, T - 9, D)
    packed = torch.cat([first, second], dim=1)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 0] = True
    resets[:, 9] = True
    if not core.supports_resets:
        with pytest.raises(ResetsUnsupported):
            core(packed, resets=resets)
        return
    y = core(packed, resets=resets)
    torch.testing.assert_close(y[:, :9], core(first), atol=ATOL, rtol=0)
    torch.testing.assert_close(y[:, 9:], core(second), atol=ATOL, rtol=0)


def test_gradients_reach_every_parameter(core_name):
    core = make_core(core_name)
    core.train()
    core(torch.randn(B, T, D)).pow(2).mean().backward()
    missing = [n for n, p in core.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_copy_task_loss_falls(core_name):
    """A few hundred steps on 'repeat the token seen `lag` steps ago' bring the loss well down."""
    torch.manual_seed(0)
    vocab, lag, length = 8, 3, 32
    core = make_core(core_name)
    embed, head = torch.nn.Embedding(vocab, D), torch.nn.Linear(D, vocab)
    params = list(core.parameters()) + list(embed.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    core.train()
    losses = []
    for _ in range(300):
        tokens = torch.randint(0, vocab, (16, length))
        logits = head(core(embed(tokens)))[:, lag:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab),
                                                 tokens[:, :-lag].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    initial = torch.log(torch.tensor(float(vocab))).item()  # chance level
    assert sum(losses[-20:]) / 20 < 0.3 * initial, f"{core_name}: loss {losses[-1]:.3f}"


@torch.no_grad()
def test_branched_state_equals_each_row_run_alone(core_name):
    """Beams branched from different contexts, decoded in a chunk and token by token, reordered
    within their environment and then across environments, match the parallel form on each row's
    own whole sequence (a mix-up of environments' prefixes would fail)."""
    core = make_core(core_name)
    envs, copies, P = 3, 4, 10
    context = torch.randn(envs, P, D)  # a different context per environment
    suffix = torch.randn(envs * copies, 20, D)  # and a different continuation per row
    state = core.init_state(envs, context.device, context.dtype)
    _, state = core.step(context, state)
    state = core.branch_state(state, copies)
    origin = torch.arange(envs * copies)  # which suffix each row carries
    outs = []
    y, state = core.step(suffix[:, :3], state)  # a chunk
    outs.append(y)
    within = torch.tensor([1, 1, 0, 3, 4, 7, 7, 5, 11, 8, 9, 9])  # each row stays with its env
    for start, index in ((3, within), (8, torch.tensor([0, 5, 9, 2]))):  # then envs mixed
        state = core.select_state(state, index)
        origin, outs = origin[index], [o[index] for o in outs]
        for j in range(start, start + 5):
            y, state = core.step(suffix[origin, j:j + 1], state)
            outs.append(y)
    expected = core(torch.cat([context.repeat_interleave(copies, 0)[origin], suffix[origin]], 1))
    got = torch.cat(outs, 1)
    torch.testing.assert_close(got, expected[:, P:P + got.shape[1]], atol=ATOL, rtol=0)


@pytest.mark.parametrize("core_name", sorted(CORES))
@torch.no_grad()
def test_branching_again_and_pruning_equals_each_row_run_alone(core_name):
    """A beam planner's pattern: branch every environment, decode, keep some rows within their
    environment, branch the kept rows again (children sharing their parent's decoded tokens),
    decode, prune, decode; every row matches the parallel form on its own whole sequence."""
    core = make_core(core_name)
    envs, P = 3, 6
    seqs = torch.randn(envs, P, D)  # each row's whole input so far
    state = core.init_state(envs, seqs.device, seqs.dtype)
    _, state = core.step(seqs, state)
    outs = torch.zeros(envs, 0, D)

    def decode(state, seqs, outs, tokens, chunk=1):
        new = torch.randn(seqs.shape[0], tokens, D)
        j = 0
        while j < tokens:
            y, state = core.step(new[:, j:j + chunk], state)
            outs, j, chunk = torch.cat([outs, y], 1), j + chunk, 1
        return state, torch.cat([seqs, new], 1), outs

    def reorder(state, seqs, outs, index, branch=0):
        state = core.branch_state(state, branch) if branch else core.select_state(state, index)
        return state, seqs[index], outs[index]

    copies = 4
    state, seqs, outs = reorder(state, seqs, outs, torch.arange(envs).repeat_interleave(copies), copies)
    state, seqs, outs = decode(state, seqs, outs, 3)
    keep = torch.tensor([1, 3, 4, 6, 10, 11])  # two rows per environment
    state, seqs, outs = reorder(state, seqs, outs, keep)
    state, seqs, outs = decode(state, seqs, outs, 2)
    state, seqs, outs = reorder(state, seqs, outs, torch.arange(6).repeat_interleave(2), 2)
    state, seqs, outs = decode(state, seqs, outs, 3)  # siblings continue differently
    keep = torch.tensor([3, 0, 6, 7, 11, 9])  # within each environment, across parents
    state, seqs, outs = reorder(state, seqs, outs, keep)
    state, seqs, outs = decode(state, seqs, outs, 2)
    state, seqs, outs = reorder(state, seqs, outs, torch.arange(6).repeat_interleave(2), 2)
    state, seqs, outs = decode(state, seqs, outs, 3, chunk=2)  # a chunk after branching, then a token
    expected = core(seqs)[:, P:]
    torch.testing.assert_close(outs, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("core_name", sorted(CORES))
@torch.no_grad()
def test_branching_twice_then_mixing_environments_equals_each_row_run_alone(core_name):
    """Branching a branched state before anything was decoded after it, branching again after
    decoding (copies sharing their beam's tokens), then a reorder that mixes environments (the
    shared levels must be unfolded into per-row histories): every row matches the parallel form."""
    core = make_core(core_name)
    envs, P = 2, 5
    seqs = torch.randn(envs, P, D)
    state = core.init_state(envs, seqs.device, seqs.dtype)
    _, state = core.step(seqs, state)
    outs = torch.zeros(envs, 0, D)
    for copies in (2, 3):  # twice with no token in between
        state = core.branch_state(state, copies)
        seqs, outs = seqs.repeat_interleave(copies, 0), outs.repeat_interleave(copies, 0)
    for copies, index in ((2, torch.tensor([11, 0, 4, 7, 4, 20])), (3, None)):
        new = torch.randn(seqs.shape[0], 3, D)
        for j in range(3):
            y, state = core.step(new[:, j:j + 1], state)
            outs = torch.cat([outs, y], 1)
        seqs = torch.cat([seqs, new], 1)
        state = core.branch_state(state, copies)  # the decoded tokens shared by the copies
        seqs, outs = seqs.repeat_interleave(copies, 0), outs.repeat_interleave(copies, 0)
        new = torch.randn(seqs.shape[0], 2, D)
        y, state = core.step(new, state)  # a chunk on the branched state
        seqs, outs = torch.cat([seqs, new], 1), torch.cat([outs, y], 1)
        if index is not None:  # rows of both environments, out of order and repeated
            state, seqs, outs = core.select_state(state, index), seqs[index], outs[index]
    torch.testing.assert_close(outs, core(seqs)[:, P:], atol=ATOL, rtol=0)
