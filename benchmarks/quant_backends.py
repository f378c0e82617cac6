"""Which int8 backend to use on this CPU: torch.ao eager (fbgemm/x86) vs torchao, against fp32.

Times one ``nn.Linear`` at the planner's shapes (1,600 rows = 25 envs x 32 beams x 2), and the
critic's MLP (1,600 candidates, 23 -> 256 -> 256 -> 1), for fp32, ``torch.ao.quantization.
quantize_dynamic`` and, when ``torchao`` is importable, its int8 dynamic and weight-only configs and
PT2E static int8 with the x86 inductor quantizer compiled by ``torch.compile`` with frozen weights
(the route that fuses quantize / dequantize into the int8 GEMMs); also the largest output error
against fp32 and the CPU's int8 instructions.

    python benchmarks/quant_backends.py [--threads 2]     # PYTHONPATH may point at a torchao install

Prints a table and writes benchmarks/results/quant_backends.json.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import warnings

import torch
from cores import timed  # noqa: E402  (benchmarks/ is the script's folder)
from torch import nn

from trajectory.cpu_features import read_cpu_features
from trajectory.io import save_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPES = [(1600, 128, 384), (1600, 128, 512), (1600, 512, 128), (1600, 128, 100)]
CRITIC_MLP = (1600, 23, 256)  # candidates, observation + action, hidden width


def network(shape: tuple) -> nn.Module:
    if len(shape) == 3 and shape == CRITIC_MLP:
        _, d_in, hidden = shape
        return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 1)).eval()
    return nn.Sequential(nn.Linear(shape[1], shape[2])).eval()


def backends() -> dict:
    from torch.ao.quantization import quantize_dynamic
    found = {"torch.ao dynamic int8": lambda m: quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)}
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        return found

    def with_config(config):
        def apply(m):
            quantize_(m, config)
            return m
        return apply
    found["torchao int8 dynamic"] = with_config(Int8DynamicActivationInt8WeightConfig())
    found["torchao int8 weight-only"] = with_config(Int8WeightOnlyConfig())
    found["pt2e x86-inductor static int8, compiled"] = pt2e_static
    return found


def pt2e_static(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Export, calibrate on ``x``, convert, compile with frozen weights (inductor then packs the
    int8 weights once and fuses the (de)quantization around the GEMMs)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    prepared(x)
    return torch.compile(convert_pt2e(prepared))


def compiled_fp32(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return torch.compile(model)


@torch.no_grad()
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True  # every compiled model, fp32 and int8: weights are constants
    rows = []
    for shape in [*SHAPES, CRITIC_MLP]:
        torch.manual_seed(0)
        fp32 = network(shape)
        x = torch.randn(shape[0], shape[1])
        reference = fp32(x)
        base = timed(lambda: fp32(x), args.repeats)
        kind = "critic MLP" if shape == CRITIC_MLP else "linear"
        row = {"network": kind, "shape": list(shape), "fp32_ms": 1e3 * base}
        for name, make in {"fp32 compiled": compiled_fp32, **backends()}.items():
            model = make(copy.deepcopy(fp32), x) if make in (compiled_fp32, pt2e_static) else make(
                copy.deepcopy(fp32))
            seconds = timed(lambda: model(x), args.repeats)
            row[name] = {"ms": 1e3 * seconds, "speedup_vs_fp32": base / seconds,
                         "max_abs_error": (model(x) - reference).abs().max().item()}
        rows.append(row)
        print(f"{kind} {'x'.join(map(str, shape))}: fp32 {1e3 * base:.3f} ms | " + " | ".join(
            f"{k} {v['ms']:.3f} ms (x{v['speedup_vs_fp32']:.2f})" for k, v in row.items()
            if isinstance(v, dict)), flush=True)
    out = {"settings": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                        "engine": torch.backends.quantized.engine,
                        "cpu": platform.processor() or platform.machine(),
                        "cpu_features": read_cpu_features().describe()}, "shapes": rows}
    path = os.path.join(RESULTS, "quant_backends.json")
    save_json(out, path)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
