"""profile.py: where the time of CPU planning goes, for one or several cores and precisions, with
the planner eval.py would use (``planner=recipe``: the run's own; beam search without a run).

For each (core, precision) pair, in one process so that ratios are measured side by side:

1. a **timed pass** (no profiler): ``warmup`` plans, then ``profile_steps`` plans timed with
   ``perf_counter``; the reported ms per env step come from here only, so profiler overhead never
   enters them;
2. a **profiled pass** of ``PROFILED_PLANS`` plan(s) under ``torch.profiler`` (CPU, memory): op
   groups, top ops, peak tensor memory, a chrome trace and a tensorboard trace (every plan of a
   setting runs the same ops, and the trace of five Hyena plans at TT size passed 800 MB);
3. FLOPs counted on the fp32 model (``torch.utils.flop_counter``), against this machine's measured
   fp32 matmul throughput (the ceiling).

Op groups come from named scopes in the model and planner code (``trajectory.models.ops.scopes``)
and, inside the model, from op names. Every op's self time lands in exactly one group, so the
groups add up to the profiled total.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch

from planners import build_planner
from planners.beam import random_context
from trajectory.config import EvalConfig, ModelConfig
from trajectory.configutil import ConfigError
from trajectory.cpu_features import read_cpu_features
from trajectory.int8_choice import choose_int8_mode
from trajectory.io import save_json, save_text
from trajectory.models.ops.allocator import reuse_freed_memory
from trajectory.models.ops.decode_attention import describe as describe_attention_kernel
from trajectory.models.ops.decode_attention import set_attention_kernel
from trajectory.models.ops.scopes import PREFIX, scopes_enabled
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel

GROUPS = ("linear/matmul", "attention/retention", "FFT", "convolution", "scan", "embedding and heads",
          "int8 quant/dequant", "beam reordering", "sampling and beam bookkeeping", "python overhead",
          "other")
SCOPE_GROUPS = {"attention": "attention/retention", "fft": "FFT", "convolution": "convolution",
                "scan": "scan", "embedding_heads": "embedding and heads",
                "reorder": "beam reordering",  # the model state's copies when beams branch or are pruned
                "sampling_beam": "sampling and beam bookkeeping"}
TOP_SCOPE = "profile::planning"
TT_LAYOUT = TokenLayout(obs_dim=17, act_dim=6, vocab=100, seq_len=10)  # halfcheetah, TT's window
WARMUP_PLANS = 1
PROFILED_PLANS = 1  # under the profiler: its events and trace grow with every op recorded


# -- op groups -----------------------------------------------------------------------------------
def group_of_op(name: str) -> str:
    """The group of an op outside any named scope, from its name."""
    name = name.lower()
    if "quantize_per" in name or "dequantize" in name:
        return "int8 quant/dequant"
    if "fft" in name:
        return "FFT"
    if "scaled_dot_product" in name or "attention" in name:
        return "attention/retention"
    if "conv" in name:
        return "convolution"
    if "linear" in name or name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                                    "aten::baddbmm", "aten::einsum", "aten::_addmm_activation"):
        return "linear/matmul"
    return "other"


def group_of_event(event) -> str:
    """Nearest enclosing named scope wins; the planner's ``model`` scope hands back to op names."""
    node = event
    while node is not None:
        if node.name.startswith(PREFIX):
            label = node.name[len(PREFIX):]
            if label == "model":
                break
            return SCOPE_GROUPS.get(label, "other")
        node = node.cpu_parent
    if event.name.startswith(PREFIX) or event.name == TOP_SCOPE:
        return "python overhead"  # interpreter time between the ops of a model scope
    return group_of_op(event.name)


def _under_top(event) -> bool:
    node = event
    while node is not None:
        if node.name == TOP_SCOPE:
            return True
        node = node.cpu_parent
    return False


def breakdown(events) -> dict:
    """Self CPU time per group (ms), the profiled total, top ops and peak tensor memory."""
    groups = dict.fromkeys(GROUPS, 0.0)
    ops: dict[str, list] = {}
    total_ms = 0.0
    for event in events:
        if not _under_top(event):
            continue
        if event.name == TOP_SCOPE:
            total_ms += event.cpu_time_total / 1e3
        self_ms = event.self_cpu_time_total / 1e3
        groups[group_of_event(event)] += self_ms
        entry = ops.setdefault(event.name, [0, 0.0])
        entry[0] += 1
        entry[1] += self_ms
    top = sorted(ops.items(), key=lambda kv: -kv[1][1])[:12]
    return {"groups_ms": groups, "total_ms": total_ms,
            "top_ops": [{"op": name, "calls": calls, "self_ms": ms} for name, (calls, ms) in top]}


def peak_tensor_mb(chrome_trace: str) -> float:
    """Peak growth of live CPU tensor memory during the profiled plans: the largest running total
    of the allocator events recorded in the trace (``Total Allocated`` starts at 0)."""
    import json
    with open(chrome_trace) as f:
        events = json.load(f)["traceEvents"]
    totals = [e["args"].get("Total Allocated", 0) for e in events if e.get("name") == "[memory]"]
    return max([0, *totals]) / 2 ** 20


def random_discretizer(layout: TokenLayout):
    """A quantile discretizer fitted on Gaussian rows: for planning with random-weight models."""
    from trajectory.data.discretizer import Discretizer
    rows = np.random.default_rng(0).normal(size=(1000, layout.transition_dim))
    return Discretizer(n_bins=layout.vocab, strategy="quantile").fit(rows)


# -- measurements --------------------------------------------------------------------------------
def matmul_ceiling(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul FLOP/s at the current thread count (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def decoded_tokens_per_plan(model, planner, context: torch.Tensor) -> int:
    """One-token steps the planner takes in one plan (each over all its rows: a beam's tokens, or a
    candidate's), counted on one untimed plan it runs: the same count for every planner."""
    steps = []
    step = model.step

    def counted(tokens, state):
        steps.append(tokens.shape[1] == 1)
        return step(tokens, state)
    model.step = counted
    try:
        planner.plan(context)
    finally:
        del model.step  # the class's method again
    return max(1, sum(steps))


def count_flops(model: TrajectoryModel, planner, context: torch.Tensor) -> dict:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        planner.plan(context)
    per_plan = counter.get_total_flops()
    with torch.no_grad():
        state = model.init_state(1, "cpu")
        _, state = model.step(context[:1], state)
        with FlopCounterMode(display=False) as counter:
            model.step(context[:1, :1], state)
    return {"flops_per_env_step": per_plan, "flops_per_token": counter.get_total_flops()}


def model_bytes(model, scratch: str) -> int:
    from trajectory.quantize import save_quantized, state_bytes
    path = os.path.join(scratch, "size.pt")
    if getattr(model, "quantization", "none") == "none":
        return state_bytes(model, path)
    return save_quantized(model, path)


# -- models --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Subject:
    core: str
    precision: str
    weights: str
    model: TrajectoryModel
    float_model: TrajectoryModel
    layout: TokenLayout
    discretizer: object


def subjects(cfg: EvalConfig) -> tuple[list[Subject], str, str]:
    """Every (core, precision) to profile, the output folder and a note on the weights."""
    from trajectory.checkpoint import load_checkpoint
    from trajectory.quantize import quantize_checkpoint_model, quantize_model
    checkpoint = load_checkpoint(cfg.checkpoints_path) if cfg.checkpoints_path else None
    if checkpoint is not None:
        base, layout, disc = checkpoint.config.model, checkpoint.layout, checkpoint.discretizer
        out = cfg.out or os.path.join(os.path.dirname(checkpoint.path.rstrip("/")), "profile")
        note = f"checkpoint {checkpoint.path}"
    else:
        base, layout = ModelConfig(), TT_LAYOUT
        disc = random_discretizer(layout)
        out = cfg.out or os.path.join("runs", "profile")
        note = "no checkpoint given: random-weight models at TT's size (planning cost does not " \
               "depend on the weights; predictions do)"
    cores = [c.strip() for c in (cfg.compare or (base.core if checkpoint else "gpt")).split(",") if c.strip()]
    found = []
    for core in cores:
        # auto: what eval.py would plan with for this core on this CPU
        auto = choose_int8_mode(core, base.d_model, cfg.planner).mode
        precisions = list(dict.fromkeys(auto if p.strip() == "auto" else p.strip()
                                        for p in cfg.quantize.split(",")))
        if checkpoint is not None and core == base.core:
            float_model, weights = checkpoint.build_model("cpu").eval(), "checkpoint"
        else:
            torch.manual_seed(cfg.seed)
            float_model = TrajectoryModel(dataclasses.replace(base, core=core), layout).eval()
            weights = "random"
        for precision in precisions:
            if precision == "static" and weights == "checkpoint":
                model, _ = quantize_checkpoint_model(checkpoint, float_model, precision,
                                                     cfg.calibration_batches)
            else:  # random weights calibrate on random windows: the cost is what is measured
                calibration = [torch.randint(0, layout.vocab, (64, layout.max_tokens - 1))
                               for _ in range(cfg.calibration_batches)]
                model = quantize_model(float_model, precision, calibration)
            found.append(Subject(core, precision, weights, model, float_model, layout, disc))
    return found, out, note


# -- one subject ---------------------------------------------------------------------------------
def profile_subject(subject: Subject, cfg: EvalConfig, out: str, scratch: str,
                    flops_cache: dict) -> dict:
    layout = subject.layout
    context = random_context(layout, cfg, cfg.n_episodes, torch.Generator().manual_seed(cfg.seed))
    planner = build_planner(subject.model, subject.discretizer, layout, cfg,
                            torch.Generator().manual_seed(cfg.seed))
    for _ in range(WARMUP_PLANS):
        planner.plan(context)
    seconds = []
    for _ in range(cfg.profile_steps):  # the timed pass: no profiler attached
        start = time.perf_counter()
        planner.plan(context)
        seconds.append(time.perf_counter() - start)
    ms_per_step = 1e3 * statistics.median(seconds)

    name = f"{subject.core}_{subject.precision}"
    with scopes_enabled():  # a compiled step meets the named scopes here first: compile them untimed
        decode_steps = decoded_tokens_per_plan(subject.model, planner, context)
    from torch.profiler import ProfilerActivity, profile, record_function
    with scopes_enabled(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function(TOP_SCOPE):
            for _ in range(PROFILED_PLANS):
                planner.plan(context)
    trace = os.path.join(out, f"trace_{name}.json")
    prof.export_chrome_trace(trace)
    # the tensorboard profiler plugin reads <logdir>/<run>/<worker>.pt.trace.json
    tb_run = os.path.join(out, "tb", name)
    os.makedirs(tb_run, exist_ok=True)
    shutil.copyfile(trace, os.path.join(tb_run, f"{name}.pt.trace.json"))
    parts = breakdown(prof.events())

    float_planner = build_planner(subject.float_model, subject.discretizer, layout, cfg,
                                  torch.Generator().manual_seed(cfg.seed))
    # the same float model serves every precision of a core: count its FLOPs once
    key = id(subject.float_model)
    if key not in flops_cache:
        flops_cache[key] = count_flops(subject.float_model, float_planner, context)
    flops = flops_cache[key]
    per_plan = PROFILED_PLANS
    return {
        "core": subject.core, "precision": subject.precision, "weights": subject.weights,
        "parameters": subject.float_model.num_parameters(),
        "bytes": model_bytes(subject.model, scratch),
        "ms_per_env_step": ms_per_step,
        "ms_per_env_step_all": [1e3 * s for s in seconds],
        "ms_per_decoded_token": ms_per_step / decode_steps,
        "profiled_ms_per_env_step": parts["total_ms"] / per_plan,
        "groups_ms_per_env_step": {g: ms / per_plan for g, ms in parts["groups_ms"].items()},
        "top_ops": [{**op, "self_ms": op["self_ms"] / per_plan} for op in parts["top_ops"]],
        "peak_tensor_mb": peak_tensor_mb(trace),
        **flops,
        "achieved_flop_s": flops["flops_per_env_step"] / (ms_per_step / 1e3),
        "trace": trace,
    }


# -- report --------------------------------------------------------------------------------------
def planner_settings(settings: dict) -> str:
    """What was planned, in words (reports written before the planner was recorded were beams)."""
    planner, envs, context = settings.get("planner", "beam"), settings["n_envs"], settings["beam_context"]
    if planner == "beam":
        return (f"{envs} envs x beam {settings['beam_width']} x expand {settings['sample_expand']}, "
                f"{settings['beam_steps']} planned transitions, {context} of context")
    if planner == "critic":
        return f"{envs} envs, the critic planner: {settings['beam_width']} candidates, {context} of context"
    return f"{envs} envs, planner={planner}, {context} of context"


def markdown(report: dict) -> str:
    rows = report["results"]
    ceiling = report["machine"]["matmul_flop_s"]
    base = rows[0]["ms_per_env_step"]
    features = report["machine"].get("cpu_features", {})
    int8 = ", ".join(features.get("int8_instructions", [])) or "no VNNI/AMX"
    lines = [f"# Planning profile ({report['machine']['threads']} threads, "
             f"{features.get('model') or report['machine']['cpu']}; int8 instructions: {int8})",
             "", report["weights_note"], "",
             f"Settings: {planner_settings(report['settings'])}; "
             f"{report['settings']['profile_steps']} timed and {report['settings']['profiled_plans']}"
             f" profiled plan(s) after {WARMUP_PLANS} warm-up. Matmul ceiling (fp32, measured): "
             f"{ceiling / 1e9:.1f} GFLOP/s. GPT's planning attention: "
             f"{report['settings'].get('attention_kernel', 'torch')}.", "",
             "| core | precision | weights | ms / env step | vs first | ms / token | size MB | "
             "MFLOP / token | GFLOP/s | % of ceiling | peak tensor MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['core']} | {r['precision']} | {r['weights']} | {r['ms_per_env_step']:.1f} | "
                     f"{base / r['ms_per_env_step']:.2f}x | {r['ms_per_decoded_token']:.2f} | "
                     f"{r['bytes'] / 1e6:.2f} | {r['flops_per_token'] / 1e6:.2f} | "
                     f"{r['achieved_flop_s'] / 1e9:.2f} | {100 * r['achieved_flop_s'] / ceiling:.1f} | "
                     f"{r['peak_tensor_mb']:.1f} |")
    lines += ["", "## Time by op group (ms per env step, profiled pass; % of its total)", "",
              "| group | " + " | ".join(f"{r['core']} {r['precision']}" for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for g in GROUPS:
        cells = []
        for r in rows:
            ms = r["groups_ms_per_env_step"][g]
            cells.append(f"{ms:.1f} ({100 * ms / max(1e-9, r['profiled_ms_per_env_step']):.0f}%)")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"{r['profiled_ms_per_env_step']:.1f}" for r in rows)
    lines.append(f"| **total (profiled)** | {totals} |")
    for r in rows:
        lines += ["", f"## Top ops: {r['core']} {r['precision']} (self time per env step)", "",
                  "| op | calls | ms | % |", "|---|---:|---:|---:|"]
        for op in r["top_ops"]:
            share = 100 * op["self_ms"] / max(1e-9, r["profiled_ms_per_env_step"])
            lines.append(f"| `{op['op']}` | {op['calls']} | {op['self_ms']:.2f} | {share:.1f} |")
    lines += ["", "Traces: `trace_<core>_<precision>.json` (chrome://tracing or Perfetto) and "
              "`tb/` (tensorboard with the torch profiler plugin)."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["results"]
    labels = [f"{r['core']}\n{r['precision']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows) + 3), 4.5))
    bottom = np.zeros(len(rows))
    colors = plt.get_cmap("tab10").colors
    for i, g in enumerate(GROUPS):
        values = np.array([r["groups_ms_per_env_step"][g] for r in rows])
        ax.bar(labels, values, bottom=bottom, label=g, color=colors[i % len(colors)])
        bottom += values
    ax.set_ylabel("ms per env step (profiled)")
    ax.set_title("Where planning time goes")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def profile_planning(cfg: EvalConfig) -> dict:
    if cfg.device != "cpu":
        raise ConfigError("profile.py reports CPU inference; use --device=cpu")
    reuse_freed_memory()  # planning reallocates large state buffers every reorder
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_attention_kernel(cfg.attention_kernel)
    if cfg.profile_steps < 1:
        raise ConfigError("profile_steps must be >= 1")
    torch.manual_seed(cfg.seed)
    found, out, note = subjects(cfg)
    os.makedirs(out, exist_ok=True)
    print(note, flush=True)
    results, flops_cache = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for subject in found:
            result = profile_subject(subject, cfg, out, scratch, flops_cache)
            results.append(result)
            print(f"{result['core']:7s} {result['precision']:8s} {result['ms_per_env_step']:9.1f} ms/env step"
                  f"  {result['ms_per_decoded_token']:7.2f} ms/token", flush=True)
    report = {
        "weights_note": note,
        "settings": {"planner": cfg.planner, "n_envs": cfg.n_episodes, "beam_width": cfg.beam_width,
                     "beam_steps": cfg.beam_steps,
                     "beam_context": cfg.beam_context, "sample_expand": cfg.sample_expand,
                     "profile_steps": cfg.profile_steps, "profiled_plans": PROFILED_PLANS,
                     "warmup_plans": WARMUP_PLANS, "seed": cfg.seed,
                     "attention_kernel": describe_attention_kernel()},
        "machine": {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "cpu_features": read_cpu_features().describe(),
                    "torch": torch.__version__, "matmul_flop_s": matmul_ceiling(),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "results": results,
    }
    report["plot"] = plot(report, os.path.join(out, "op_groups.png"))
    save_json(report, os.path.join(out, "profile.json"))
    save_text(markdown(report), os.path.join(out, "profile.md"))
    print(f"report: {os.path.join(out, 'profile.md')}")
    return report
