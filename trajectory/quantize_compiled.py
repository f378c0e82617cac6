"""``quantize=compiled``: int8 linear maps through torchao, inside the compiled one-token step.

torch.ao's eager int8 modules quantize each activation, call the int8 GEMM and dequantize, layer by
layer, so the float work between layers and the per-call conversions stay. Here the core's
``nn.Linear`` maps become torchao's dynamic int8 (int8 weights per channel, activations per token)
and the step is compiled with frozen weights: inductor then fuses the activations' quantization
and the pointwise work around the int8 GEMMs into few kernels, which pays on CPUs with VNNI/AMX at
TT's width (``benchmarks/int8_routes.py``). The output heads and everything else stay float;
prefill chunks run eager (as with ``compile_step``).

torchao is optional (``pip install torchao``); the check that it is there is torch-free.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import warnings

from trajectory.configutil import ConfigError

INSTALL = "pip install torchao (or choose quantize=dynamic, static or none)"


def check_available() -> None:
    """One line naming the fix when torchao is not installed (torch-free)."""
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError(f"quantize=compiled needs torchao, which is not installed: {INSTALL}")


def _import_torchao():
    # torchao reports each optional GPU kernel library it cannot load (none is used on the CPU), and
    # torch logs a deprecation of how torchao registers one of its types: neither concerns the user
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    finally:
        pytree_log.setLevel(level)
    return Int8DynamicActivationInt8WeightConfig, quantize_


def quantize_compiled(model):
    """A copy of ``model`` whose core's linear maps are torchao dynamic int8 and whose one-token step
    is compiled (the first plans pay the compilation)."""
    check_available()
    config, quantize_ = _import_torchao()
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True  # weights as constants: packed once for the int8 GEMMs
    model = copy.deepcopy(model).cpu().eval()
    model.core.freeze_step()  # S5: the one-token step's projections become linear maps, int8 too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(model.core, config())
    model.compile_step()
    model.quantization = "compiled"
    return model


def int8_layers(model) -> int:
    """Linear maps whose weight torchao holds in int8."""
    import torch
    return sum(type(getattr(m, "weight", None)).__module__.startswith("torchao")
               for m in model.modules() if isinstance(m, torch.nn.Linear))
