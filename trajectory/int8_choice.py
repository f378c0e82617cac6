"""``quantize=auto``: int8 only where this CPU has the instructions that make it pay and the core's
measured table says it does; fp32 otherwise, with the reason (torch-free).

The table (``int8_measured.json`` beside this module) holds, per CPU class and core, the best int8
mode's planning speed over fp32 as ``benchmarks/quantization.py --record-auto`` measured it, with
the CPU, the model size and the results file it came from.
"""
from __future__ import annotations

import dataclasses
import json
import os

from trajectory.cpu_features import CpuFeatures, read_cpu_features

MEASURED_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "int8_measured.json")
# below this, int8's small gain is within run-to-run timing noise and not worth its score risk
MIN_SPEEDUP = 1.1


@dataclasses.dataclass(frozen=True)
class Int8Choice:
    mode: str  # none | dynamic | static
    reason: str
    cpu: dict


def read_measured_table(path: str = MEASURED_TABLE) -> dict:
    """{cpu class: {core: {mode, planning_speedup, size, cpu, source}}}; empty when absent."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def choose_int8_mode(core: str, features: CpuFeatures | None = None, table: dict | None = None) -> Int8Choice:
    features = features or read_cpu_features()
    table = read_measured_table() if table is None else table
    cpu, isa = features.describe(), features.isa_class
    if not features.int8_instructions:
        return Int8Choice("none", f"fp32: {features.model or 'this CPU'} has no VNNI or AMX int8 "
                                  f"instructions ({isa}), where int8 planning measured no faster", cpu)
    entry = table.get(isa, {}).get(core)
    if entry is None:
        return Int8Choice("none", f"fp32: int8 planning of the {core} core has not been measured on a "
                                  f"{isa} CPU (benchmarks/quantization.py --record-auto measures it)", cpu)
    measured = (f"int8 {entry['mode']} planned x{entry['planning_speedup']:.2f} the speed of fp32 for "
                f"{core} ({entry['size']}) on {entry['cpu']}, {entry['source']}")
    if entry["planning_speedup"] < MIN_SPEEDUP:
        return Int8Choice("none", f"fp32: {measured}", cpu)
    return Int8Choice(entry["mode"], f"{entry['mode']}: {measured}", cpu)
