"""int8 post-training quantization of a TrajectoryModel: ``none``, ``dynamic`` or ``static``.

* **dynamic**: weights int8 (per output channel), activations quantized on the fly per call.
* **static**: weights int8 (per channel), activation scales fixed beforehand from calibration
  windows of the training data (histogram observers), so no range is computed at run time.

Both cover every ``nn.Linear`` of the core (attention / retention / gate / MLP projections) and the
output heads; the per-dimension heads are first rewritten as plain ``nn.Linear`` maps
(:class:`LinearHeads`). What stays in float is listed by :func:`float_ops` with the reason.

Backend: ``torch.ao.quantization`` eager mode with the fbgemm/x86 kernels. torchao's int8 configs
were measured on this CPU (``benchmarks/quant_backends.py``) and run ~30x slower than fp32 in eager
mode, so the only maintained library with fast CPU int8 linear kernels on this torch is torch.ao.
It warns that it is deprecated; those warnings are silenced here, where the choice is made.

The step/recurrent forms keep working: quantized modules take and return float tensors of any
leading shape, so planning uses a quantized model exactly as a float one.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import types
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from trajectory.io import save_torch
from trajectory.models.trajectory_model import EinLinear, TrajectoryModel

MODES = ("none", "dynamic", "static", "compiled")  # compiled: trajectory/quantize_compiled.py

# torch.ao announces its deprecation on import and on quantized-tensor creation (every static
# forward); the package chose this backend on purpose, so its users are not told about it each call.
# The filters apply only inside the package's own quantization calls and quantized forwards
# (:func:`quiet_deprecations`): other code in the same program keeps every warning.
_DEPRECATIONS = ("torch.ao.quantization is deprecated", "torch.quantize_per_tensor",
                 "must run observer before calling calculate_qparams", "reduce_range will be deprecated",
                 "TypedStorage is deprecated")


@contextlib.contextmanager
def quiet_deprecations():
    """Silence torch.ao's deprecation notices inside the block only."""
    with warnings.catch_warnings():
        for message in _DEPRECATIONS:
            warnings.filterwarnings("ignore", message=f".*{message}.*")
        yield


def _quiet_forward(module: nn.Module, *args, **kwargs):
    with quiet_deprecations():
        return type(module).forward(module, *args, **kwargs)


def _quiet_forwards(model: nn.Module) -> None:
    """Run every quantized module's forward inside :func:`quiet_deprecations` (a bound method, so
    a deep copy of the model rebinds it to the copy)."""
    for module in model.modules():
        if type(module).__module__.startswith("torch.ao.") and "forward" not in vars(module):
            module.forward = types.MethodType(_quiet_forward, module)


MODEL_FLOAT_OPS = {
    "token embedding lookup": "a gather, no arithmetic to quantize",
    "LayerNorm": "needs float statistics; in a float residual stream int8 would add a "
                 "quant/dequant pair around each norm",
    "residual additions and activations (GELU / sine / swish)": "elementwise on float activations",
    "sampling (softmax, top-k, cdf filter) and beam scoring": "outside the model",
}


class QuantizationError(ValueError):
    pass


class LinearHeads(nn.Module):
    """:class:`EinLinear`'s per-dimension maps as ``n`` plain ``nn.Linear`` (what int8 backends
    quantize). Same call signature: ``x [..., n, d_in]`` (slot i uses map i) or, with
    ``slots [t]``, ``x [..., t, d_in]`` where position j uses map ``slots[j]``."""

    def __init__(self, heads: EinLinear):
        super().__init__()
        n, d_in, d_out = heads.weight.shape
        self.maps = nn.ModuleList(nn.Linear(d_in, d_out, bias=False) for _ in range(n))
        with torch.no_grad():
            for i, linear in enumerate(self.maps):
                linear.weight.copy_(heads.weight[i].T)

    def forward(self, x: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        if slots is None:
            return torch.stack([m(x[..., i, :]) for i, m in enumerate(self.maps)], dim=-2)
        slot_list = slots.tolist()
        if len(set(slot_list)) == len(slot_list):  # decoding: each slot at most once
            return torch.stack([self.maps[s](x[..., j, :]) for j, s in enumerate(slot_list)], dim=-2)
        outputs = [None] * len(slot_list)
        for s in sorted(set(slot_list)):  # a prefill: one call per slot over its positions
            where = [j for j, v in enumerate(slot_list) if v == s]
            y = self.maps[s](x[..., where, :])
            for k, j in enumerate(where):
                outputs[j] = y[..., k, :]
        return torch.stack(outputs, dim=-2)


def int8_targets(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules to quantize (skipping subtrees marked ``int8_exempt``)."""
    exempt = [name for name, m in model.named_modules() if getattr(m, "int8_exempt", False)]
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name.startswith(e + ".") for e in exempt)]


def float_ops(model: TrajectoryModel) -> dict[str, str]:
    """What stays in float after quantization, with the reason."""
    return {**model.core.float_ops, **MODEL_FLOAT_OPS}


def _with_linear_heads(model: TrajectoryModel) -> TrajectoryModel:
    model = copy.deepcopy(model).cpu().eval()
    if isinstance(model.heads, EinLinear):
        model.heads = LinearHeads(model.heads)
    return model


def _wrap_static(model: nn.Module, targets: list[str]) -> None:
    """Put each target Linear inside quant -> Linear -> dequant, with the x86 backend's qconfig."""
    from torch.ao.quantization import QuantWrapper, get_default_qconfig
    qconfig = get_default_qconfig("x86")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = QuantWrapper(getattr(parent, child))
        wrapper.qconfig = qconfig
        setattr(parent, child, wrapper)


def _convert(model: TrajectoryModel, mode: str, calibration: Iterable[torch.Tensor] | None
             ) -> TrajectoryModel:
    with quiet_deprecations():
        model = _convert_loudly(model, mode, calibration)
    _quiet_forwards(model)
    return model


def _convert_loudly(model: TrajectoryModel, mode: str, calibration: Iterable[torch.Tensor] | None
                    ) -> TrajectoryModel:
    from torch.ao import quantization as tq
    targets = int8_targets(model)
    if mode == "dynamic":
        spec = {name: tq.default_dynamic_qconfig for name in targets}
        return tq.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    _wrap_static(model, targets)
    tq.prepare(model, inplace=True)
    if calibration is not None:
        seen = 0
        with torch.no_grad():
            for tokens in calibration:
                model(tokens.cpu())
                seen += 1
        if not seen:
            raise QuantizationError("static quantization got no calibration batches; "
                                    "set calibration_batches >= 1")
    tq.convert(model, inplace=True)
    return model


def quantize_model(model: TrajectoryModel, mode: str,
                   calibration: Iterable[torch.Tensor] | None = None) -> TrajectoryModel:
    """A quantized copy of ``model`` (CPU, eval mode); ``model`` itself is left unchanged.

    ``calibration``: token windows ``[B, L]`` for ``static`` (required there, ignored otherwise).
    """
    if mode not in MODES:
        raise QuantizationError(f"quantize must be one of {', '.join(MODES)}, got '{mode}'")
    if mode == "none":
        return model
    if mode == "compiled":
        from trajectory.quantize_compiled import quantize_compiled
        return quantize_compiled(model)
    if mode == "static" and calibration is None:
        raise QuantizationError("static quantization needs calibration windows from the training "
                                "data; pass calibration= or use quantize=dynamic")
    model = _convert(_with_linear_heads(model), mode, calibration)
    model.quantization = mode
    return model


def calibration_windows(dataset, n_batches: int, batch_size: int = 64, seed: int = 0,
                        exclude: np.ndarray | None = None) -> list[torch.Tensor]:
    """``n_batches`` random windows' input tokens ``[batch_size, L]`` from a WindowDataset,
    avoiding the indices in ``exclude`` (e.g. windows held out to measure agreement)."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(dataset))
    if exclude is not None:
        pool = np.setdiff1d(pool, exclude)
    chosen = rng.choice(pool, size=min(len(pool), n_batches * batch_size), replace=False)
    return [dataset.batch(chosen[i:i + batch_size])["x"] for i in range(0, len(chosen), batch_size)]


# -- saving and loading ------------------------------------------------------------------------
def save_quantized(model: TrajectoryModel, path: str, source: dict | None = None) -> int:
    """Write the quantized weights (int8 packed, with scales) atomically, with ``source`` (what
    they were made from, see :func:`quantize_checkpoint_model`); returns bytes on disk."""
    mode = getattr(model, "quantization", "none")
    with quiet_deprecations():  # packed int8 weights serialize through TypedStorage
        save_torch({"mode": mode, "state_dict": model.state_dict(), "source": source}, path)
    return os.path.getsize(path)


def read_quantized(path: str) -> dict:
    """The contents of a file of :func:`save_quantized`: mode, state dict and source."""
    if not os.path.isfile(path):
        raise QuantizationError(f"no quantized model at {path}; quantize it again "
                                f"(eval.py quantize=dynamic|static writes one)")
    try:
        with quiet_deprecations():
            saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or "mode" not in saved:
            raise ValueError("not a quantized model")
    except Exception as err:
        raise QuantizationError(f"cannot read {path} ({type(err).__name__}): the file is corrupt; "
                                f"delete it and quantize again") from None
    return saved


def load_quantized(float_model: TrajectoryModel, path: str, saved: dict | None = None) -> TrajectoryModel:
    """Rebuild a model saved by :func:`save_quantized` on the architecture of ``float_model``
    (built from the same checkpoint); no calibration is needed, the scales are in the file.
    ``saved``: the file's contents when :func:`read_quantized` already read them."""
    saved = read_quantized(path) if saved is None else saved
    model = _convert(_with_linear_heads(float_model), saved["mode"], calibration=None)
    try:
        with quiet_deprecations():
            model.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError) as err:  # quantized modules raise KeyError on missing keys
        raise QuantizationError(f"{path} does not fit this checkpoint's model ({err}); "
                                f"quantize it again") from None
    model.quantization = saved["mode"]
    return model


def quantize_checkpoint_model(checkpoint, model: TrajectoryModel, mode: str,
                              calibration_batches: int, out_dir: str | None = None,
                              batch_size: int = 64, seed: int = 0) -> tuple[TrajectoryModel, dict]:
    """eval.py / profile.py: quantize a checkpoint's model, calibrating ``static`` on windows of the
    checkpoint's own training data; save the result under ``out_dir`` when given.

    A file saved there earlier is loaded instead when it was made from the same weights with the
    same settings (no recalibration, no dataset needed); otherwise it is made again and replaced.
    Returns the model and a summary for reports (mode, int8 layers, what stays float, size)."""
    if mode == "none":
        return model, {"mode": "none"}
    if mode == "compiled":  # nothing to calibrate or save: quantized in a second, compiled on first use
        from trajectory.quantize_compiled import int8_layers, quantize_compiled
        quantized = quantize_compiled(model)
        return quantized, {"mode": mode, "backend": "torchao dynamic int8 in the compiled step (inductor)",
                           "int8_linear_layers": int8_layers(quantized),
                           "stays_float": {**float_ops(model), "output heads": "float (EinLinear)"}}
    source = {"weights": weights_fingerprint(model), "mode": mode,
              "calibration_batches": calibration_batches if mode == "static" else 0,
              "batch_size": batch_size, "seed": seed}
    path = os.path.join(out_dir, f"model_int8_{mode}.pt") if out_dir is not None else None
    quantized = None
    if path is not None and os.path.isfile(path):
        try:
            saved = read_quantized(path)
        except QuantizationError:  # a corrupt file is made again
            saved = {}
        if saved.get("source") == source:
            quantized = load_quantized(model, path, saved)
    reused = quantized is not None
    if quantized is None:
        calibration = None
        if mode == "static":
            from trajectory.data.dataset import build_dataset
            from trajectory.data.sources import DatasetError
            try:
                dataset, _, _ = build_dataset(checkpoint.config.data)
            except (DatasetError, FileNotFoundError) as err:
                raise QuantizationError(f"static quantization calibrates on the checkpoint's training "
                                        f"data, which is not available here: {err}\nUse quantize=dynamic, "
                                        f"or make the dataset available.") from None
            calibration = calibration_windows(dataset, calibration_batches, batch_size, seed)
        quantized = quantize_model(model, mode, calibration)
    info = {"mode": mode, "backend": f"torch.ao eager ({torch.backends.quantized.engine})",
            "int8_linear_layers": sum(hasattr(m, "weight") and type(m).__module__.startswith(
                "torch.ao.nn.quantized") for m in quantized.modules()),
            "calibration_batches": source["calibration_batches"],
            "stays_float": float_ops(model)}
    if path is not None:
        if not reused:
            save_quantized(quantized, path, source)
        info["path"], info["bytes"], info["reused_saved_file"] = path, os.path.getsize(path), reused
    return quantized, info


def weights_fingerprint(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def state_bytes(model: nn.Module, path: str) -> int:
    """Bytes on disk of ``model``'s state dict (for size comparisons at equal serialization)."""
    save_torch(model.state_dict(), path)
    return os.path.getsize(path)
