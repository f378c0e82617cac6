"""``quantize=auto``: int8 only where this CPU has the instructions that make it pay and the measured
table says it does for a model like this one; fp32 otherwise, with the reason (torch-free).

The table (``int8_measured.json`` beside this module) lists, per CPU class, measured entries: a core,
its width, a planner, the fastest int8 mode and its planning speed over fp32, with the CPU and the
results file it came from (written by ``benchmarks/int8_routes.py --record-auto``). A model is
judged by the entry of its core closest to its width, preferring entries of its planner: int8 pays
at TT's width and not at the demo's.
"""
from __future__ import annotations

import dataclasses
import json
import os

from trajectory.cpu_features import CpuFeatures, read_cpu_features

MEASURED_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "int8_measured.json")
# below this, int8's small gain is within run-to-run timing noise and not worth its score risk
MIN_SPEEDUP = 1.1
ENTRY_KEY = ("core", "width", "planner")  # an entry replaces an earlier one with the same key


@dataclasses.dataclass(frozen=True)
class Int8Choice:
    mode: str  # none | dynamic | static | compiled
    reason: str
    cpu: dict


def read_measured_table(path: str = MEASURED_TABLE) -> dict:
    """{cpu class: [entry, ...]}; empty when absent."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def record_entries(table: dict, isa_class: str, entries: list[dict]) -> dict:
    """``table`` with ``entries`` added under ``isa_class``, each replacing an earlier entry of the same
    core, width and planner (other classes and entries are kept)."""
    kept = [e for e in table.get(isa_class, [])
            if not any(all(e.get(k) == n[k] for k in ENTRY_KEY) for n in entries)]
    return {**table, isa_class: kept + entries}


def closest_entry(entries: list[dict], core: str, width: int, planner: str) -> dict | None:
    mine = [e for e in entries if e["core"] == core]
    mine = [e for e in mine if e["planner"] == planner] or mine
    return min(mine, key=lambda e: abs(e["width"] - width)) if mine else None


def choose_int8_mode(core: str, width: int, planner: str, features: CpuFeatures | None = None,
                     table: dict | None = None) -> Int8Choice:
    features = features or read_cpu_features()
    table = read_measured_table() if table is None else table
    cpu, isa = features.describe(), features.isa_class
    if not features.int8_instructions:
        return Int8Choice("none", f"fp32: {features.model or 'this CPU'} has no VNNI or AMX int8 "
                                  f"instructions ({isa}), where int8 planning measured no faster", cpu)
    entry = closest_entry(table.get(isa, []), core, width, planner)
    if entry is None:
        return Int8Choice("none", f"fp32: int8 planning of the {core} core has not been measured on a "
                                  f"{isa} CPU (benchmarks/int8_routes.py --record-auto measures it)", cpu)
    measured = (f"int8 {entry['mode']} planned x{entry['planning_speedup']:.2f} the speed of fp32 for "
                f"{core} {entry['width']} wide ({entry['planner']}) on {entry['cpu']}, {entry['source']}")
    if entry["planning_speedup"] < MIN_SPEEDUP:
        return Int8Choice("none", f"fp32: {measured}", cpu)
    return Int8Choice(entry["mode"], f"{entry['mode']}: {measured}", cpu)
