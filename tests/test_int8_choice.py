"""quantize=auto: int8 only on a CPU with VNNI or AMX where the core's measured table says it pays,
fp32 otherwise with the reason in the report; the CPU's features read from its flags."""
from __future__ import annotations

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


def table(speedup: float) -> dict:
    return {"vnni": {"s5": {"mode": "static", "planning_speedup": speedup, "size": "TT size",
                            "cpu": "AMD EPYC 9R14", "source": "benchmarks/results/q.json"}}}


def test_auto_plans_in_fp32_without_vnni_or_amx_whatever_the_table_says():
    choice = int8_choice.choose_int8_mode("s5", AVX2, table(2.0))
    assert choice.mode == "none" and "Old Xeon has no VNNI or AMX" in choice.reason
    assert choice.cpu["isa_class"] == "avx2"


def test_auto_follows_the_measured_table_on_a_vnni_cpu():
    faster = int8_choice.choose_int8_mode("s5", VNNI, table(1.4))
    assert faster.mode == "static" and "x1.40 the speed of fp32" in faster.reason
    slower = int8_choice.choose_int8_mode("s5", VNNI, table(0.8))
    assert slower.mode == "none" and slower.reason.startswith("fp32: int8 static planned x0.80")
    assert "benchmarks/results/q.json" in slower.reason
    unmeasured = int8_choice.choose_int8_mode("gpt", VNNI, table(1.4))
    assert unmeasured.mode == "none" and "has not been measured on a vnni CPU" in unmeasured.reason


def test_the_shipped_table_names_where_each_figure_came_from():
    for isa, cores in int8_choice.read_measured_table().items():
        for core, entry in cores.items():
            assert entry["mode"] in ("dynamic", "static") and entry["planning_speedup"] > 0
            assert os.path.isfile(os.path.join(ROOT, entry["source"])), (isa, core)


@pytest.mark.parametrize("features, speedup, planned", [(AVX2, 2.0, "none"), (VNNI, 1.4, "dynamic"),
                                                        (VNNI, 0.8, "none")])
def test_eval_with_quantize_auto_plans_as_chosen_and_says_why(tmp_path, monkeypatch, features, speedup,
                                                              planned):
    from planners.rollout import load_for_eval
    run = tmp_path / "run"
    shutil.copytree(SHIPPED, run)
    measured = table(speedup)
    measured["vnni"]["s5"]["mode"] = "dynamic"  # no calibration data needed
    monkeypatch.setattr(int8_choice, "read_cpu_features", lambda: features)
    monkeypatch.setattr(int8_choice, "read_measured_table", lambda: measured)
    cfg = EvalConfig(checkpoints_path=str(run), quantize="auto", device="cpu")
    _, model = load_for_eval(cfg, torch.device("cpu"))
    info = model.quantization_info
    assert info["mode"] == planned and info["auto"].startswith("fp32" if planned == "none" else planned)
    int8_layers = [m for m in model.modules() if "quantized" in type(m).__module__]
    assert bool(int8_layers) == (planned != "none")


def test_the_benchmark_records_each_cores_fastest_mode_and_keeps_other_cpu_classes(tmp_path):
    sys.path.append(os.path.join(ROOT, "benchmarks"))
    from quantization import record_auto
    path = tmp_path / "table.json"
    path.write_text('{"avx2": {"s5": {"mode": "dynamic", "planning_speedup": 0.9}}}')
    precisions = {"dynamic": {"planning_speedup": 1.2}, "static": {"planning_speedup": 1.5}}
    out = {"settings": {"threads": 2, "cpu_features": VNNI.describe()},
           "cores": {"s5": {"model": "runs/x (loss 1.000)", "precisions": precisions}}}
    recorded = record_auto(out, "benchmarks/results/q.json", str(path))
    assert recorded["avx2"] == {"s5": {"mode": "dynamic", "planning_speedup": 0.9}}
    assert recorded["vnni"]["s5"] == {"mode": "static", "planning_speedup": 1.5, "size": "runs/x",
                                      "cpu": "AMD EPYC 9R14", "threads": 2,
                                      "source": "benchmarks/results/q.json"}
    assert int8_choice.read_measured_table(str(path)) == recorded
