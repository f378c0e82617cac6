"""GPT-specific checks: the K/V cache, int8 dynamic quantization of the fused QKV, the context window
(forward refuses longer inputs; step slides), and resets with per-row episode boundaries."""
import itertools
import warnings

import pytest
import torch
from torch import nn

from trajectory.models.cores.base import CoreConfig
from trajectory.models.cores.gpt import GPTCore

D, T, B, H = 32, 24, 3, 4
ATOL = 1e-4


def make_core(n_layers: int = 2, max_len: int = 64, dropout: float = 0.0) -> GPTCore:
    torch.manual_seed(0)
    cfg = CoreConfig(d_model=D, n_layers=n_layers, n_heads=H, max_len=max_len, dropout=dropout)
    return GPTCore(cfg).eval()


def run_steps(core: GPTCore, x: torch.Tensor, chunks: list[int]) -> tuple[torch.Tensor, dict]:
    state, outs, t = core.init_state(x.shape[0], x.device), [], 0
    for size in chunks:
        y, state = core.step(x[:, t:t + size], state)
        outs.append(y)
        t += size
    assert t == x.shape[1]
    return torch.cat(outs, dim=1), state


@torch.no_grad()
def test_cache_holds_keys_and_values_of_each_layer():
    core = make_core()
    x = torch.randn(B, 10, D)
    _, state = core.step(x, core.init_state(B, "cpu"))
    assert state.pos == state.length == 10
    assert len(state.keys) == len(state.values) == 2
    for k, v in zip(state.keys, state.values):
        assert k.shape == v.shape == (B, H, core.cfg.max_len, D // H)  # preallocated buffers
    # layer 0's keys/values are the projection of its normed input, not the input itself
    block = core.blocks[0]
    _, k, v = block.attn.qkv(block.ln1(x + core.pos_emb.weight[:10])).split(D, dim=2)
    torch.testing.assert_close(state.keys[0][:, :, :10], k.view(B, 10, H, D // H).transpose(1, 2))
    torch.testing.assert_close(state.values[0][:, :, :10], v.view(B, 10, H, D // H).transpose(1, 2))


@torch.no_grad()
def test_decoding_writes_into_the_cache_without_reallocating_it():
    core = make_core()
    state = core.init_state(B, "cpu")
    buffers = [b.data_ptr() for b in state.keys + state.values]
    for t in range(5):
        _, state = core.step(torch.randn(B, 1, D), state)
    assert [b.data_ptr() for b in state.keys + state.values] == buffers
    assert state.length == 5


@torch.no_grad()
def test_fused_qkv_is_a_plain_linear_that_int8_dynamic_quantization_replaces():
    core = make_core()
    assert type(core.blocks[0].attn.qkv) is nn.Linear
    assert core.blocks[0].attn.qkv.out_features == 3 * D
    with warnings.catch_warnings():  # torch deprecates the eager quantization API (still works)
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear
        from torch.ao.quantization import quantize_dynamic
        quantized = quantize_dynamic(core, {nn.Linear}, dtype=torch.qint8)
    for block in quantized.blocks:
        assert isinstance(block.attn.qkv, DynamicQuantLinear)
        assert isinstance(block.attn.proj, DynamicQuantLinear)
    x = torch.randn(B, T, D)
    reference = core(x)
    y = quantized(x)
    assert (y - reference).abs().max() < 0.05 * reference.abs().max()
    # the cache works on the int8 model too (activation scales are per call, so not bit-equal)
    y_steps, _ = run_steps(quantized, x, [5, 1, 18])
    assert (y_steps - reference).abs().max() < 0.05 * reference.abs().max()


def test_forward_longer_than_max_len_is_a_clear_error():
    core = make_core(max_len=16)
    with pytest.raises(ValueError, match="max_len=16"):
        core(torch.randn(1, 17, D))


@torch.no_grad()
def test_step_is_exact_up_to_max_len_then_slides_the_same_in_any_chunking():
    L, total = 16, 40
    core = make_core(max_len=L)
    x = torch.randn(B, total, D)
    y_one, state = run_steps(core, x, [1] * total)
    y_chunks, state_chunks = run_steps(core, x, [7, 13, 1, 19])  # chunks straddle the window edge
    torch.testing.assert_close(y_one[:, :L], core(x[:, :L]), atol=ATOL, rtol=0)
    torch.testing.assert_close(y_chunks, y_one, atol=ATOL, rtol=0)
    assert state.pos == state_chunks.pos == total
    for k in state.keys + state_chunks.keys:
        assert k.shape[2] == L  # trimmed to the last max_len entries
    torch.testing.assert_close(state_chunks.keys[1], state.keys[1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_sliding_window_forgets_tokens_older_than_max_len():
    """With one layer, the output at n depends on inputs n - max_len + 1 .. n only."""
    L, total = 8, 20
    core = make_core(n_layers=1, max_len=L)
    x = torch.randn(1, total, D)
    y, _ = run_steps(core, x, [total])
    for index, visible in ((total - L - 1, False), (total - L, True)):
        changed = x.clone()
        changed[:, index] = 10.0 * torch.randn(D)
        y_changed, _ = run_steps(core, changed, [5, 15])
        change = (y_changed[:, -1] - y[:, -1]).abs().max()
        assert change > 1e-2 if visible else change < 1e-6


@torch.no_grad()
def test_resets_at_different_positions_per_row_equal_separate_episodes():
    core = make_core()
    x = torch.randn(B, T, D)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 5] = resets[1, 0] = resets[1, 1] = resets[1, 13] = resets[2, 20] = True
    y = core(x, resets=resets)
    for b in range(B):
        starts = [0] + [t for t in range(1, T) if resets[b, t]] + [T]
        for s, e in itertools.pairwise(starts):
            torch.testing.assert_close(y[b:b + 1, s:e], core(x[b:b + 1, s:e]), atol=ATOL, rtol=0)


def test_dropout_only_in_training():
    core = make_core(dropout=0.5)
    x = torch.randn(B, T, D)
    core.train()
    assert not torch.allclose(core(x), core(x))
    core.eval()
    torch.testing.assert_close(core(x), core(x))
