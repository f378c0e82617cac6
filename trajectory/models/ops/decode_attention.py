"""GPT's planning attention as one fused CPU kernel (``decode_attention.cpp``), built on first use.

Planning decodes one token at a time for every beam: per layer, each of thousands of (row, head)
pairs scores one query against the shared context, its beam's tokens and its own suffix. In torch
that is a batched product per part over thousands of tiny matrices, plus a softmax pass per part,
and eager torch pays a fixed cost per small matrix and per pass. The kernel does all of it in one
pass per (row, head), with the running softmax in registers.

``attention_kernel`` picks the path: ``auto`` (the kernel where it applies and builds, else torch,
with one warning saying why), ``torch`` (always the torch path: the reference), ``fused`` (the
kernel or an error naming the fix). The kernel is built once per machine with torch's C++
extension loader (a C++ compiler and ninja; tens of seconds) into torch's extension cache.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch
from torch.utils.flop_counter import register_flop_formula

from trajectory.config import ATTENTION_KERNELS
from trajectory.configutil import ConfigError

HEAD_WIDTHS = (8, 16, 32, 64)  # whole AVX2 registers of the kernel's accumulators
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode_attention.cpp")

_mode = "auto"
_module = None  # the built extension
_unavailable: str | None = None  # why it cannot be built here, once known
_lock = threading.Lock()
_calls = 0  # kernel calls in this process: whether a model's planning went through it
_torch_calls = 0  # shared-prefix attentions that took torch's ops instead


def set_attention_kernel(mode: str) -> None:
    """Choose GPT's planning attention for this process: auto | torch | fused. ``fused`` builds
    the kernel now and raises :class:`ConfigError` with the fix when it cannot."""
    global _mode
    if mode not in ATTENTION_KERNELS:
        raise ConfigError(f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, got '{mode}'")
    if mode == "fused" and load() is None:
        raise ConfigError(f"attention_kernel=fused: {_unavailable}; or set attention_kernel=torch")
    _mode = mode


def attention_kernel() -> str:
    return _mode


@contextlib.contextmanager
def kernel_mode(mode: str):
    """``set_attention_kernel(mode)`` for a block, the previous mode put back after it (benchmarks
    and tests that time or compare both paths in one process)."""
    previous = _mode
    set_attention_kernel(mode)
    try:
        yield
    finally:
        set_attention_kernel(previous)


def describe() -> str:
    """What GPT's planning attention ran on in this process, for reports: fused, torch, torch
    (why the kernel is unavailable), or unused (no plan needed it: another core)."""
    if _calls and not _torch_calls:
        return "fused"
    if _calls:
        return "fused and torch"  # e.g. a CPU and a GPU model, or the mode changed in between
    if _torch_calls or _mode == "torch":
        return f"torch ({_unavailable})" if _unavailable and _mode != "torch" else "torch"
    return "unused"


def count_torch_path() -> None:
    """Notes that a shared-prefix attention ran on torch's ops (for :func:`describe`). Not while
    dynamo traces a compiled step: a changing global there would be guarded on, and recompiled."""
    global _torch_calls
    if not torch.compiler.is_compiling():
        _torch_calls += 1


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used on this machine (None: it can, or no build was tried)."""
    return _unavailable


def load():
    """The built extension, or None (``unavailable_reason()`` says why). Builds on first call."""
    global _module, _unavailable
    if _module is not None or _unavailable is not None:
        return _module
    with _lock:
        if _module is None and _unavailable is None:
            _unavailable = _missing_requirement()
            if _unavailable is None:
                try:
                    _module = _build()
                except Exception as err:  # a compiler error, a missing header: fall back, say why
                    _unavailable = f"building {os.path.basename(SOURCE)} failed ({str(err).splitlines()[0]})"
    return _module


def _missing_requirement() -> str | None:
    import shutil

    from torch.utils.cpp_extension import is_ninja_available
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "the fused attention kernel needs an x86 CPU with AVX2 and FMA"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler found (install g++ or set CXX)"
    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _build():
    from torch.utils.cpp_extension import load as load_extension

    # Said only when it takes long, i.e. when it compiles rather than loads the cached build.
    notice = threading.Timer(3.0, print, ("building the fused decode-attention kernel (once per "
                                          "machine, under a minute; attention_kernel=torch skips it)",),
                             {"flush": True})
    notice.start()
    try:
        return load_extension("trajectory_decode_attention", [SOURCE],
                              extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
                              extra_ldflags=["-fopenmp"])
    finally:
        notice.cancel()


def applies(q: torch.Tensor) -> bool:
    """Whether the fused kernel takes this attention: a CPU float32 query of a supported head
    width, outside autograd, in ``auto`` or ``fused`` mode, and the kernel built. In ``auto`` the
    first miss of the build warns once and torch's path runs from then on."""
    if _mode == "torch" or q.device.type != "cpu" or q.dtype != torch.float32:
        return False
    if q.shape[-1] not in HEAD_WIDTHS or (q.requires_grad and torch.is_grad_enabled()):
        return False
    if _module is None:
        if _unavailable is not None:
            return False
        if load() is None:
            warnings.warn(f"planning with torch's attention: {_unavailable}", stacklevel=2)
            return False
    return True


@torch.library.custom_op("trajectory::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, level_keys: list[torch.Tensor], level_values: list[torch.Tensor],
                     suffix_k: torch.Tensor, suffix_v: torch.Tensor) -> torch.Tensor:
    """softmax(q [level keys...; suffix_k]^T / sqrt(hd)) [level values...; suffix_v] by the fused
    kernel. q [B, H, t, hd]; level_keys[i] / level_values[i] [G_i, H, L_i, hd] (keys at any
    strides, values with contiguous channels), each read by B / G_i consecutive rows; suffix_k/v
    [B, H, S, hd], each row's own, whose last t entries are the queries' tokens (causal among
    them). Returns [B, H, t, hd]. An op of torch's, so a compiled step calls it as one kernel."""
    global _calls
    _calls += 1
    return _module.decode_attention(q, level_keys, level_values, suffix_k, suffix_v)


def calls() -> int:
    """How many times the kernel ran in this process."""
    return _calls


@decode_attention.register_fake
def _(q, level_keys, level_values, suffix_k, suffix_v):
    return q.new_empty(q.shape)


@register_flop_formula(torch.ops.trajectory.decode_attention)
def decode_attention_flops(q_shape, level_keys_shape, level_values_shape, suffix_k_shape,
                           suffix_v_shape, *args, out_shape=None, **kwargs) -> int:
    """The matrix products of the attention, counted as for torch's path (its two batched
    products per part): per query and key, a multiply-add per channel for the score and one for
    the weighted value."""
    B, H, t, hd = q_shape
    keys = sum(shape[2] for shape in level_keys_shape) + suffix_k_shape[2]
    return 2 * 2 * B * H * t * keys * hd
