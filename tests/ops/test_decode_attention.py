"""The fused decode-attention kernel against torch's shared-prefix attention, and how it is chosen."""
import shutil
import warnings

import pytest
import torch

from trajectory.configutil import ConfigError
from trajectory.models.cores.gpt import attend_shared, shared_prefix_attention
from trajectory.models.ops import decode_attention as da

# The kernel builds wherever this suite's machine can build it (x86 with AVX2, a compiler, ninja);
# where it cannot, the tests of the kernel itself have nothing to compare.
BUILDABLE = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
             and shutil.which("c++") is not None and shutil.which("ninja") is not None)
needs_kernel = pytest.mark.skipif(not BUILDABLE, reason="no AVX2 CPU or C++ toolchain here")


@pytest.fixture(autouse=True)
def restore_mode(monkeypatch):
    """Each test starts with no attention counted and leaves the mode as it found it."""
    monkeypatch.setattr(da, "_calls", 0)
    monkeypatch.setattr(da, "_torch_calls", 0)
    mode = da.attention_kernel()
    yield
    da.set_attention_kernel(mode)


def random_state(rows_per_env=6, copies=2, envs=3, heads=2, hd=16, prefix=7, middle=5, own=4,
                 t=1, seed=0):
    """q and levels as GPT's shared step passes them: the prefix's keys a view of keys stored
    transposed, the middle level's keys a view into a larger buffer (as branch_state keeps them),
    and the own suffix a view of the first entries of per-row buffers."""
    g = torch.Generator().manual_seed(seed)
    B = envs * rows_per_env
    q = torch.randn(B, t, heads, hd, generator=g).transpose(1, 2)  # strided, as the step's view
    shared = [(torch.randn(envs, heads, hd, prefix, generator=g).transpose(-1, -2),
               torch.randn(envs, heads, prefix, hd, generator=g))]
    if middle:
        beams = B // copies
        k = torch.randn(beams, heads, middle + 3, hd, generator=g)[:, :, :middle]
        v = torch.randn(beams, heads, middle + 3, hd, generator=g)[:, :, :middle]
        shared.append((k, v))
    suffix_k = torch.randn(B, heads, own + 2, hd, generator=g)[:, :, :own]
    suffix_v = torch.randn(B, heads, own + 2, hd, generator=g)[:, :, :own]
    return q, shared, suffix_k, suffix_v


@needs_kernel
@pytest.mark.parametrize("hd", [8, 16, 32, 64])
@pytest.mark.parametrize("levels", ["suffix only", "context", "context and beam"])
def test_kernel_equals_torch_attention_over_every_level_layout(hd, levels):
    da.set_attention_kernel("fused")
    # lengths that are not multiples of the kernel's 8- and 32-key blocks, and one that is
    q, shared, k, v = random_state(hd=hd, prefix=37, middle=13 if hd != 32 else 32, own=9)
    shared = {"suffix only": [], "context": shared[:1], "context and beam": shared}[levels]
    expected = shared_prefix_attention(q, shared, k, v)
    got = da.decode_attention(q, [keys for keys, _ in shared], [values for _, values in shared], k, v)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-6)


@needs_kernel
def test_kernel_is_causal_among_several_queries_and_reads_each_rows_own_group():
    da.set_attention_kernel("fused")
    q, shared, k, v = random_state(t=3, own=5)
    expected = shared_prefix_attention(q, shared, k, v)
    got = attend_shared(q, shared, k, v)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-6)
    # a later key of the suffix must not reach an earlier query: change the last token's key
    k2 = k.clone()
    k2[:, :, -1] += 10.0
    moved = attend_shared(q, shared, k2, v)
    torch.testing.assert_close(moved[:, :, :2], got[:, :, :2])
    assert not torch.allclose(moved[:, :, 2], got[:, :, 2])
    # rows read their own environment's context: swapping two environments' prefixes moves rows
    swapped = [(shared[0][0].flip(0), shared[0][1].flip(0)), shared[1]]
    assert not torch.allclose(attend_shared(q, swapped, k, v), got)


@needs_kernel
def test_scores_far_apart_stay_finite_and_exact():
    """One key dominating (scores hundreds apart) and levels whose maxima differ wildly: the
    running rescale must not overflow or lose the small parts."""
    da.set_attention_kernel("fused")
    q, shared, k, v = random_state(hd=16)
    q = q * 30.0
    expected = shared_prefix_attention(q, shared, k, v)
    got = attend_shared(q, shared, k, v)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_bad_shapes_are_refused_by_the_kernel():
    da.set_attention_kernel("fused")
    q, shared, k, v = random_state()
    keys, values = shared[0]
    with pytest.raises(RuntimeError, match="divide the rows"):
        four = keys.repeat(2, 1, 1, 1)[:4], values.repeat(2, 1, 1, 1)[:4]
        da.decode_attention(q, [four[0]], [four[1]], k, v)  # 18 rows in 4 groups
    with pytest.raises(RuntimeError, match="head width"):
        q5, _, k5, v5 = random_state(hd=12)
        da.decode_attention(q5, [], [], k5, v5)


def test_torch_mode_and_other_inputs_take_torch_path():
    da.set_attention_kernel("torch")
    q, shared, k, v = random_state()
    assert not da.applies(q)
    assert da.describe() == "torch"
    torch.testing.assert_close(attend_shared(q, shared, k, v), shared_prefix_attention(q, shared, k, v))
    da.set_attention_kernel("auto")
    assert not da.applies(q.double())  # float32 only
    assert not da.applies(torch.randn(2, 2, 1, 12))  # a head width the kernel has no registers for
    with torch.enable_grad():
        assert not da.applies(q.clone().requires_grad_())  # training: autograd needs torch's ops


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="auto, torch, fused"):
        da.set_attention_kernel("flash")


def test_without_a_toolchain_auto_warns_once_and_fused_names_the_fix(monkeypatch):
    monkeypatch.setattr(da, "_module", None)
    monkeypatch.setattr(da, "_unavailable", None)
    monkeypatch.setattr(da, "_missing_requirement", lambda: "no C++ compiler found (install g++)")
    da.set_attention_kernel("auto")
    q, shared, k, v = random_state()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        out = attend_shared(q, shared, k, v)
    torch.testing.assert_close(out, shared_prefix_attention(q, shared, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: later calls are quiet
        attend_shared(q, shared, k, v)
    assert "no C++ compiler" in da.describe()
    with pytest.raises(ConfigError, match="install g\\+\\+.*attention_kernel=torch"):
        da.set_attention_kernel("fused")


def test_a_failed_build_falls_back_with_the_compilers_first_line(monkeypatch):
    monkeypatch.setattr(da, "_module", None)
    monkeypatch.setattr(da, "_unavailable", None)
    monkeypatch.setattr(da, "_missing_requirement", lambda: None)

    def broken_build():
        raise RuntimeError("Error building extension 'trajectory_decode_attention'\nlong log")
    monkeypatch.setattr(da, "_build", broken_build)
    assert da.load() is None
    assert da.unavailable_reason() == ("building decode_attention.cpp failed (Error building "
                                       "extension 'trajectory_decode_attention')")


@needs_kernel
def test_flop_counter_counts_the_kernels_products_as_torchs_path_does():
    from torch.utils.flop_counter import FlopCounterMode
    q, shared, k, v = random_state(t=2, own=6)

    def count(kernel):
        da.set_attention_kernel(kernel)
        with FlopCounterMode(display=False) as counter:
            attend_shared(q, shared, k, v)
        return counter.get_total_flops()
    assert count("fused") == count("torch") > 0


def test_describe_reports_which_path_the_planning_attention_took(monkeypatch):
    da.set_attention_kernel("auto")
    assert da.describe() == "unused"  # no GPT planned: nothing to report
    q, shared, k, v = random_state()
    attend_shared(q.double(), [(a.double(), b.double()) for a, b in shared], k.double(), v.double())
    assert da.describe() == "torch"  # a dtype the kernel does not take
    if da.load() is not None:
        attend_shared(q, shared, k, v)
        assert da.describe() == "fused and torch"
        monkeypatch.setattr(da, "_torch_calls", 0)
        assert da.describe() == "fused"


@needs_kernel
def test_keys_strided_in_both_dimensions_take_the_general_loop_and_agree():
    """A level whose keys have neither unit channel nor unit position stride (every other column
    of a wider tensor) goes through the kernel's general loop."""
    da.set_attention_kernel("fused")
    q, shared, k, v = random_state(hd=16, prefix=11, middle=9)
    wide = torch.randn(shared[1][0].shape[0], 2, 9, 32)[..., ::2]  # strides (..., 32, 2)
    assert wide.stride(-1) != 1 and wide.stride(-2) != 1
    shared[1] = (wide, shared[1][1])
    torch.testing.assert_close(attend_shared(q, shared, k, v), shared_prefix_attention(q, shared, k, v),
                               rtol=2e-5, atol=2e-6)


def test_kernel_mode_puts_the_previous_mode_back_even_after_an_error():
    da.set_attention_kernel("auto")
    with pytest.raises(RuntimeError, match="inside"):
        with da.kernel_mode("torch"):
            assert da.attention_kernel() == "torch"
            raise RuntimeError("inside")
    assert da.attention_kernel() == "auto"
