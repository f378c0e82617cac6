"""quantize=auto: int8 only on a CPU with VNNI or AMX where the core's measured table says it pays,
fp32 otherwise with the reason in the report; the CPU's features read from its flags."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

import trajectory.int8_choice as int8_choice
from trajectory.config import EvalConfig
from trajectory.cpu_features import CpuFeatures, parse_cpuinfo, read_cpu_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "pretrained", "halfcheetah-medium-s5-cpu")

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 {flags}

processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu
"""
AVX2 = CpuFeatures("Old Xeon", frozenset({"avx2", "fma"}))
VNNI = CpuFeatures("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_vnni"}))


@pytest.mark.parametrize("flags, isa, instructions", [
    ("avx2 fma", "avx2", []),
    ("avx2 avx512f avx512bw", "avx512", []),
    ("avx2 avx512f avx512_vnni", "vnni", ["AVX-512 VNNI"]),
    ("avx2 avx_vnni", "vnni", ["AVX-VNNI"]),
    ("avx2 avx512f avx512_vnni amx_tile amx_int8", "amx", ["AMX-INT8", "AVX-512 VNNI"]),
    ("sse2", "other", []),
])
def test_the_cpu_class_and_int8_instructions_come_from_the_first_processors_flags(flags, isa, instructions):
    features = parse_cpuinfo(CPUINFO.format(flags=flags))
    assert features.model == "AMD EPYC 9R14"
    assert features.isa_class == isa and features.int8_instructions == instructions
    assert features.describe() == {"model": "AMD EPYC 9R14", "isa_class": isa,
                                   "int8_instructions": instructions}


def test_a_system_without_cpuinfo_knows_no_flags(tmp_path):
    features = read_cpu_features(str(tmp_path / "missing"))
    assert features.flags == frozenset() and features.isa_class == "other"


def entry(core="s5", width=128, planner="beam", mode="static", speedup=1.4) -> dict:
    return {"core": core, "width": width, "planner": planner, "mode": mode, "planning_speedup": speedup,
            "size": f"{width} wide", "cpu": "AMD EPYC 9R14", "source": "benchmarks/results/q.json"}


def table(speedup: float, mode: str = "static") -> dict:
    return {"vnni": [entry(mode=mode, speedup=speedup)]}


def test_auto_plans_in_fp32_without_vnni_or_amx_whatever_the_table_says():
    choice = int8_choice.choose_int8_mode("s5", 128, "beam", AVX2, table(2.0))
    assert choice.mode == "none" and "Old Xeon has no VNNI or AMX" in choice.reason
    assert choice.cpu["isa_class"] == "avx2"


def test_auto_follows_the_measured_table_on_a_vnni_cpu():
    faster = int8_choice.choose_int8_mode("s5", 128, "beam", VNNI, table(1.4))
    assert faster.mode == "static" and "x1.40 the speed of fp32" in faster.reason
    slower = int8_choice.choose_int8_mode("s5", 128, "beam", VNNI, table(0.8))
    assert slower.mode == "none" and slower.reason.startswith("fp32: int8 static planned x0.80")
    assert "benchmarks/results/q.json" in slower.reason
    unmeasured = int8_choice.choose_int8_mode("gpt", 128, "beam", VNNI, table(1.4))
    assert unmeasured.mode == "none" and "has not been measured on a vnni CPU" in unmeasured.reason


def test_a_model_is_judged_by_the_closest_width_preferring_its_planner():
    entries = [entry(width=64, planner="critic", mode="compiled", speedup=0.9),
               entry(width=64, planner="beam", mode="compiled", speedup=1.2),
               entry(width=128, planner="beam", mode="compiled", speedup=1.3)]
    choose = lambda width, planner: int8_choice.choose_int8_mode("s5", width, planner, VNNI,  # noqa: E731
                                                                 {"vnni": entries})
    assert choose(64, "critic").mode == "none"  # its own planner at its width: no gain
    assert choose(64, "beam").mode == "compiled" and "64 wide (beam)" in choose(64, "beam").reason
    assert choose(256, "beam").reason.startswith("compiled: int8 compiled planned x1.30")  # nearest: 128
    assert choose(128, "policy").reason.startswith("compiled: int8 compiled planned x1.30")  # no policy entry


def test_recording_replaces_an_entry_of_the_same_model_and_planner_and_keeps_the_rest():
    table = {"avx2": [entry()], "vnni": [entry(speedup=0.9), entry(width=64)]}
    recorded = int8_choice.record_entries(table, "vnni", [entry(speedup=1.5), entry(core="gpt")])
    assert recorded["avx2"] == [entry()]
    assert recorded["vnni"] == [entry(width=64), entry(speedup=1.5), entry(core="gpt")]


def test_the_shipped_table_names_where_each_figure_came_from():
    for isa, entries in int8_choice.read_measured_table().items():
        for e in entries:
            assert e["mode"] in ("dynamic", "static", "compiled") and e["planning_speedup"] > 0, (isa, e)
            assert os.path.isfile(os.path.join(ROOT, e["source"])), (isa, e)


@pytest.mark.parametrize("features, speedup, planned", [(AVX2, 2.0, "none"), (VNNI, 1.4, "dynamic"),
                                                        (VNNI, 0.8, "none")])
def test_eval_with_quantize_auto_plans_as_chosen_and_says_why(tmp_path, monkeypatch, features, speedup,
                                                              planned):
    from planners.rollout import load_for_eval
    run = tmp_path / "run"
    shutil.copytree(SHIPPED, run)
    measured = table(speedup, mode="dynamic")  # no calibration data needed
    monkeypatch.setattr(int8_choice, "read_cpu_features", lambda: features)
    monkeypatch.setattr(int8_choice, "read_measured_table", lambda: measured)
    cfg = EvalConfig(checkpoints_path=str(run), quantize="auto", device="cpu")
    _, model = load_for_eval(cfg, torch.device("cpu"))
    info = model.quantization_info
    assert info["mode"] == planned and info["auto"].startswith("fp32" if planned == "none" else planned)
    int8_layers = [m for m in model.modules() if "quantized" in type(m).__module__]
    assert bool(int8_layers) == (planned != "none")


def test_the_routes_benchmark_records_the_fastest_int8_route_per_model_and_planner(tmp_path):
    sys.path.append(os.path.join(ROOT, "benchmarks"))
    from int8_routes import record_auto
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"avx2": [entry()]}))

    def row(planner, route, speedup):
        return {"model": "s5 64x2 (run)", "core": "s5", "width": 64, "planner": planner, "route": route,
                "speedup_vs_fp32": speedup}
    out = {"settings": {"threads": 2, "cpu_features": VNNI.describe()},
           "rows": [row("beam", "fp32", 1.0), row("beam", "fp32, compiled step", 1.5),  # not int8
                    row("beam", "quantize=dynamic", 0.9), row("beam", "quantize=compiled", 1.2),
                    row("critic", "quantize=dynamic", 0.8), row("critic", "quantize=compiled", 0.7)]}
    recorded = record_auto(out, "benchmarks/results/r.json", str(path))
    assert recorded["avx2"] == [entry()]
    assert [(e["planner"], e["mode"], e["planning_speedup"]) for e in recorded["vnni"]] == [
        ("beam", "compiled", 1.2), ("critic", "dynamic", 0.8)]
    assert recorded["vnni"][0]["source"] == "benchmarks/results/r.json" and recorded["vnni"][0]["width"] == 64
    assert int8_choice.read_measured_table(str(path)) == recorded
