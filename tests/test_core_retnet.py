"""RetNet-specific checks: the parallel, recurrent and chunkwise forms agree, with and without resets,
and the retention matches the paper's normalized parallel formula written out naively."""
import itertools

import pytest
import torch

from trajectory.models.cores.base import CoreConfig
from trajectory.models.cores.retnet import RetNetCore, retention, retention_chunk

D, T, B, H = 32, 24, 3, 4
ATOL = 1e-4


def make_core(chunk_size: int = 0, n_heads: int = H) -> RetNetCore:
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=D, n_layers=2, n_heads=n_heads, max_len=64, dropout=0.0)
    return RetNetCore(cfg, RetNetCore.Options(chunk_size=chunk_size)).eval()


def random_resets(batch: int, length: int) -> torch.Tensor:
    """Different episode boundaries in every row; row 0 has no reset at t = 0."""
    resets = torch.zeros(batch, length, dtype=torch.bool)
    resets[1:, 0] = True
    resets[0, 7] = resets[1, 4] = resets[1, 5] = resets[1, 17] = resets[2, 11] = True
    return resets


def run_separately(core: RetNetCore, x: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """Each episode of each row through the core on its own."""
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        starts = [0] + [t for t in range(1, x.shape[1]) if resets[b, t]] + [x.shape[1]]
        for s, e in itertools.pairwise(starts):
            out[b:b + 1, s:e] = core(x[b:b + 1, s:e])
    return out


def recurrent_reference(q, k, v, gamma, resets=None):
    """Eq. (6) token by token: S_n = gamma S_{n-1} + k_n^T v_n (S zeroed at a reset); o_n = q_n S_n."""
    state = torch.zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])
    outs = []
    for n in range(q.shape[2]):
        decay = gamma[None, :, None, None]
        if resets is not None:
            decay = decay * (~resets[:, n]).float()[:, None, None, None]
        state = decay * state + k[:, :, n, :, None] * v[:, :, n, None, :]
        outs.append((q[:, :, n, None] @ state)[:, :, 0])
    return torch.stack(outs, dim=2)


def paper_parallel_reference(q, k, v, gamma):
    """Sec. 2.2 written out: D~ = D / sqrt(rowsum D), R = QK^T/sqrt(d) * D~, R~ = R / max(|rowsum R|, 1)."""
    n = torch.arange(q.shape[2], dtype=torch.float32)
    lag = n[:, None] - n[None, :]
    decay = torch.where(lag >= 0, gamma[:, None, None] ** lag.clamp(min=0), 0.0)  # [H, T, T]
    decay = decay / decay.sum(-1, keepdim=True).sqrt()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 * decay
    scores = scores / scores.sum(-1, keepdim=True).abs().clamp(min=1.0)
    return scores @ v


def test_gamma_per_head_follows_the_paper():
    for n_heads in (2, 4, 8):
        core = make_core(n_heads=n_heads)
        expected = 1.0 - 2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float64))
        for block in core.blocks:
            torch.testing.assert_close(block.retention.gamma(), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("with_resets", [False, True])
def test_retention_chunk_forms_agree_with_recurrence(with_resets):
    torch.manual_seed(1)
    q, k, v = torch.randn(B, H, T, 8), torch.randn(B, H, T, 8), torch.randn(B, H, T, 6)
    gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))
    gamma[-1] = 0.5  # a fast decay too, so a wrong power of gamma shows
    resets = random_resets(B, T) if with_resets else None
    expected = recurrent_reference(q, k, v, gamma, resets)
    for size in (T, 1, 5, 7, 16):  # parallel, recurrent, chunks that do not divide T
        outs, state = [], None
        for s in range(0, T, size):
            r = None if resets is None else resets[:, s:s + size]
            o, state = retention_chunk(q[:, :, s:s + size], k[:, :, s:s + size], v[:, :, s:s + size],
                                       state, gamma.log(), r)
            outs.append(o)
        torch.testing.assert_close(torch.cat(outs, 2), expected, atol=ATOL, rtol=1e-5,
                                   msg=f"chunk size {size}")


def test_retention_matches_the_papers_normalized_parallel_formula():
    torch.manual_seed(2)
    q, k, v = torch.randn(B, H, T, 8), torch.randn(B, H, T, 8), torch.randn(B, H, T, 6)
    gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float32))
    positions = torch.arange(T).expand(B, T)
    for scale in (1.0, 30.0):  # at 30 most rows have |sum R| > 1, so R~ rescales them
        expected = paper_parallel_reference(q * scale, k, v, gamma)
        for size in (0, 1, 5):
            o, state = retention(q * scale, k, v, gamma.log(), positions, chunk_size=size)
            torch.testing.assert_close(o, expected, atol=ATOL, rtol=1e-5)
    assert state.shape == (B, H, 8, 6 + 1)  # last column: decayed key sum for the normalization
    small = paper_parallel_reference(q, k, v, gamma)
    assert not torch.allclose(30.0 * small, expected, atol=1e-2)  # R~ was not a no-op


@torch.no_grad()
@pytest.mark.parametrize("chunk_size", [1, 5, 7, 16])
def test_chunkwise_forward_and_step_equal_parallel(chunk_size):
    x = torch.randn(B, T, D)
    expected = make_core(0)(x)
    core = make_core(chunk_size)
    torch.testing.assert_close(core(x), expected, atol=ATOL, rtol=0)
    state, outs, t = core.init_state(B, "cpu"), [], 0
    for size in (9, 1, 3, 11):  # step chunks themselves cut into chunk_size pieces
        y, state = core.step(x[:, t:t + size], state)
        outs.append(y)
        t += size
    torch.testing.assert_close(torch.cat(outs, 1), expected, atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("chunk_size", [0, 1, 5, 16])
def test_resets_equal_separate_episodes_in_every_form(chunk_size):
    core = make_core(chunk_size)
    x, resets = torch.randn(B, T, D), random_resets(B, T)
    torch.testing.assert_close(core(x, resets=resets), run_separately(core, x, resets),
                               atol=ATOL, rtol=0)


@torch.no_grad()
def test_state_shape_and_counter():
    core = make_core()
    attn = core.blocks[0].retention
    _, state = core.step(torch.randn(B, 10, D), core.init_state(B, "cpu"))
    assert state["pos"] == 10
    assert len(state["S"]) == 2
    for s in state["S"]:
        assert s.shape == (B, H, D // H, attn.dv + 1)
    assert attn.dv == 2 * D // H  # the paper's value width 2d


@torch.no_grad()
def test_long_step_run_stays_finite():
    """Step far past max_len: no position table to outgrow and no xPos scale to overflow."""
    core = make_core(n_heads=2)
    state = core.init_state(1, "cpu")
    state["pos"] = 100_000
    y, _ = core.step(torch.randn(1, 4, D), state)
    assert torch.isfinite(y).all()


def test_bad_head_width_is_an_error():
    with pytest.raises(ValueError, match="even"):
        RetNetCore(CoreConfig(d_model=30, n_heads=10))


@torch.no_grad()
def test_token_steps_past_the_deferred_decay_limit_equal_parallel():
    """One token at a time for more than ``max_undecayed`` tokens (the state's decay is deferred
    and applied when the limit is reached), then a chunk (applied before it), reordered rows in
    between: every output and the final state match the parallel / chunk forms."""
    core = make_core(n_heads=2)
    limit = core.max_undecayed
    length = limit + limit // 2 + 5
    x = torch.randn(B, length, D)
    expected = RetNetCore.forward(core, x)
    state, outs = core.init_state(B, "cpu"), []
    for t in range(length - 5):
        y, state = core.step(x[:, t:t + 1], state)
        outs.append(y)
        assert state["undecayed"] == (t % limit) + 1
    index = torch.tensor([2, 0, 1])  # a reorder keeps each row's deferred decay with it
    state = core.select_state(state, index)
    y, state = core.step(x[index, length - 5:], state)
    assert state["undecayed"] == 0
    got = torch.cat([torch.cat(outs, 1)[index], y], 1)
    torch.testing.assert_close(got, expected[index], atol=ATOL, rtol=0)
    _, chunk_state = core.step(x[index], core.init_state(B, "cpu"))
    for s, reference in zip(state["S"], chunk_state["S"]):
        torch.testing.assert_close(s, reference, atol=ATOL, rtol=0)


def decode(core: RetNetCore, x: torch.Tensor) -> torch.Tensor:
    """x one token at a time through ``step`` (the folded decoding path), without gradients."""
    state, outs = core.init_state(x.shape[0], "cpu"), []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = core.step(x[:, t:t + 1], state)
            outs.append(y)
    return torch.cat(outs, 1)


def test_decoding_reads_the_current_weights_not_a_stale_folded_projection():
    core = make_core()
    x = torch.randn(B, 12, D)
    decode(core, x)  # fills the cache of folded projections for these positions
    with torch.no_grad():
        core.blocks[0].retention.q.weight.mul_(1.5)  # an in-place update, as an optimizer makes
        core.blocks[1].retention.g.weight.add_(0.1)
    torch.testing.assert_close(decode(core, x), RetNetCore.forward(core, x), atol=ATOL, rtol=0)
    assert core.blocks[0].retention._token_projections  # the cache was used and refilled


def test_int8_projections_decode_through_the_general_form():
    core = make_core()
    quantized = torch.ao.quantization.quantize_dynamic(core, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(B, 10, D)
    # int8 rounds each step's activations on their own range: near the float model, not equal
    torch.testing.assert_close(decode(quantized, x), decode(core, x), atol=0.1, rtol=0)
    assert "_token_projections" not in vars(quantized.blocks[0].retention)  # nothing was folded
