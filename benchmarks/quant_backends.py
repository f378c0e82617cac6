"""Which int8 backend to use on this CPU: torch.ao eager (fbgemm/x86) vs torchao, against fp32.

Times one ``nn.Linear`` at the planner's shapes (1,600 rows = 25 envs x 32 beams x 2) for fp32,
``torch.ao.quantization.quantize_dynamic`` and, when ``torchao`` is importable, its int8 dynamic
and weight-only configs; also the largest output error against fp32.

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

from trajectory.io import save_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPES = [(1600, 128, 384), (1600, 128, 512), (1600, 512, 128), (1600, 128, 100)]


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
    return found


@torch.no_grad()
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for n, d_in, d_out in SHAPES:
        torch.manual_seed(0)
        fp32 = nn.Sequential(nn.Linear(d_in, d_out)).eval()
        x = torch.randn(n, d_in)
        reference = fp32(x)
        base = timed(lambda: fp32(x), args.repeats)
        row = {"shape": [n, d_in, d_out], "fp32_ms": 1e3 * base}
        for name, make in backends().items():
            model = make(copy.deepcopy(fp32))
            seconds = timed(lambda: model(x), args.repeats)
            row[name] = {"ms": 1e3 * seconds, "speedup_vs_fp32": base / seconds,
                         "max_abs_error": (model(x) - reference).abs().max().item()}
        rows.append(row)
        print(f"{n}x{d_in}->{d_out}: fp32 {1e3 * base:.3f} ms | " + " | ".join(
            f"{k} {v['ms']:.3f} ms (x{v['speedup_vs_fp32']:.2f})" for k, v in row.items()
            if isinstance(v, dict)), flush=True)
    out = {"settings": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                        "engine": torch.backends.quantized.engine,
                        "cpu": platform.processor() or platform.machine()}, "shapes": rows}
    path = os.path.join(RESULTS, "quant_backends.json")
    save_json(out, path)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
