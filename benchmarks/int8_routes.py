"""Which route to int8 makes a whole plan faster: each route beside fp32, timed in one process.

Routes, for each model and planner:

* ``fp32``: the model as trained, eager;
* ``fp32, compiled step``: ``model.compile_step()`` (the one-token step through torch.compile);
* ``quantize=dynamic``: torch.ao's eager int8 linear maps and heads;
* ``quantize=compiled`` (when torchao is importable): the core's linear maps as torchao's dynamic
  int8, inside the compiled step with frozen weights (``trajectory/quantize_compiled.py``);
* ``model steps free (bound)``: not a route but its ceiling: every model step returns logits made
  once per shape, so the plan costs only what is not the model (drawing tokens, bookkeeping, the
  critic). fp32 over it bounds the speed-up any faster model, int8 or other, can give that plan.

Models: a trained run (``--run``; the critic planner too when the run has a critic) and/or random
TT-size models of ``--cores`` (beam search only: cost does not depend on the weights).

    python benchmarks/int8_routes.py [--run runs/<name>] [--cores s5,gpt] [--threads 2]

Prints a table and writes benchmarks/results/int8_routes.json (``--out`` to change).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import warnings

import numpy as np
import torch
from cores import timed  # noqa: E402  (benchmarks/ is the script's folder)

from planners import build_planner
from planners.beam import random_context
from planners.profiling import TT_LAYOUT, random_discretizer
from trajectory.checkpoint import load_checkpoint
from trajectory.config import EvalConfig, ModelConfig
from trajectory.cpu_features import read_cpu_features
from trajectory.int8_choice import MEASURED_TABLE, read_measured_table, record_entries
from trajectory.io import save_json
from trajectory.models.trajectory_model import ModelState, TrajectoryModel
from trajectory.quantize import quantize_model

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FREE_MODEL = "model steps free (bound)"


def fp32(model):
    return model


def compiled_step(model):
    model = copy.deepcopy(model)
    model.compile_step()
    return model


def torch_ao_dynamic(model):
    return quantize_model(model, "dynamic")


def int8_compiled(model):
    return quantize_model(model, "compiled")


class FreeModelSteps:
    """A model whose steps cost nothing: each returns the logits the real model gave the first call
    of that shape, and the state it was given, its position advanced. Everything else (initial,
    selected and branched states, the layout) is the real model's."""

    def __init__(self, model: TrajectoryModel):
        self.model, self._logits = model, {}

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def step(self, tokens: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        logits = self._logits.get(tuple(tokens.shape))
        if logits is None:
            logits = self._logits[tuple(tokens.shape)] = self.model.step(tokens, state)[0]
        return logits, ModelState(state.core, state.pos + tokens.shape[1])


def routes() -> dict:
    found = {"fp32": fp32, "fp32, compiled step": compiled_step, "quantize=dynamic": torch_ao_dynamic}
    if importlib.util.find_spec("torchao") is not None:
        found["quantize=compiled"] = int8_compiled
    found[FREE_MODEL] = FreeModelSteps
    return found


def subjects(args) -> list[tuple[str, TrajectoryModel, object, object, list[str], str | None]]:
    """(name, model, layout, discretizer, planners, run folder or None) to time; the model's config
    names its core and width."""
    found = []
    if args.run:
        checkpoint = load_checkpoint(args.run)
        model = checkpoint.build_model("cpu").eval()
        planners = ["beam"] + (["critic"] if os.path.isfile(os.path.join(args.run, "critic",
                                                                          "critic.pt")) else [])
        size = f"{checkpoint.config.model.d_model}x{checkpoint.config.model.n_layers}"
        found.append((f"{checkpoint.config.model.core} {size} ({os.path.basename(args.run.rstrip('/'))})",
                      model, checkpoint.layout, checkpoint.discretizer, planners, args.run))
    for core in filter(None, args.cores.split(",")):
        torch.manual_seed(0)
        model = TrajectoryModel(ModelConfig(core=core), TT_LAYOUT).eval()
        found.append((f"{core} TT size, random weights", model, TT_LAYOUT, random_discretizer(TT_LAYOUT),
                      ["beam"], None))
    return found


@torch.no_grad()
def planner_call(model, layout, discretizer, planner: str, run: str | None, envs: int):
    """One plan of ``envs`` environments as a callable, warmed up (compilation, allocator)."""
    cfg = EvalConfig(checkpoints_path=run, planner=planner, n_episodes=envs)
    context = random_context(layout, cfg, envs, torch.Generator().manual_seed(0))
    plan = build_planner(model, discretizer, layout, cfg, torch.Generator().manual_seed(0)).plan
    for _ in range(2):
        plan(context)
    return lambda: plan(context)


@torch.no_grad()
def interleaved_ms(calls: dict, plans: int, rounds: int) -> dict:
    """Median ms per plan of each call over ``rounds`` rounds that time every call in turn, so that
    a slower spell of the machine falls on all of them alike."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(1e3 * timed(call, plans))
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="", help="a trained run (with its critic for planner=critic)")
    parser.add_argument("--cores", default="", help="random TT-size models, e.g. s5,gpt")
    parser.add_argument("--envs", type=int, default=25)
    parser.add_argument("--plans", type=int, default=3, help="timed plans per route and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the routes (median)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS, "int8_routes.json"))
    parser.add_argument("--record-auto", action="store_true",
                        help="record the fastest int8 route per model and planner in quantize=auto's table")
    args = parser.parse_args(argv)
    if not (args.run or args.cores):
        parser.error("name a trained run (--run) or cores to build at TT size (--cores)")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True  # every compiled step takes the weights as constants, as int8 does
    rows = []
    for name, model, layout, discretizer, planners, run in subjects(args):
        for planner in planners:
            calls = {route: planner_call(make(model), layout, discretizer, planner, run, args.envs)
                     for route, make in routes().items()}
            ms = interleaved_ms(calls, args.plans, args.rounds)
            base = ms["fp32"]
            for route, value in ms.items():
                rows.append({"model": name, "core": model.cfg.core, "width": model.cfg.d_model,
                             "planner": planner, "route": route, "ms_per_plan": value,
                             "speedup_vs_fp32": base / value})
                print(f"{name:40s} {planner:7s} {route:20s} {value:9.1f} ms/plan  x{base / value:.2f}",
                      flush=True)
    out = {"settings": {"envs": args.envs, "timed_plans": args.plans, "rounds": args.rounds,
                        "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                        "cpu_features": read_cpu_features().describe()}, "rows": rows}
    save_json(out, args.out)
    print(f"wrote {args.out}")
    if args.record_auto:
        record_auto(out, os.path.relpath(args.out, os.path.dirname(os.path.dirname(RESULTS))))
    return out


INT8_ROUTES = {"quantize=dynamic": "dynamic", "quantize=compiled": "compiled"}


def record_auto(out: dict, source: str, table_path: str = MEASURED_TABLE) -> dict:
    """Per model and planner, the fastest int8 route and its planning speed over fp32, as entries of
    this CPU's class in quantize=auto's table."""
    best: dict[tuple, dict] = {}
    for row in out["rows"]:
        if row["route"] in INT8_ROUTES:
            key = (row["core"], row["width"], row["planner"])
            if key not in best or row["speedup_vs_fp32"] > best[key]["speedup_vs_fp32"]:
                best[key] = row
    features = out["settings"]["cpu_features"]
    entries = [{"core": r["core"], "width": r["width"], "planner": r["planner"],
                "mode": INT8_ROUTES[r["route"]], "planning_speedup": round(r["speedup_vs_fp32"], 3),
                "size": r["model"], "cpu": features["model"], "threads": out["settings"]["threads"],
                "source": source}
               for r in best.values()]
    table = record_entries(read_measured_table(table_path), features["isa_class"], entries)
    save_json(table, table_path)
    print(f"recorded in {table_path}: " + ", ".join(
        f"{e['core']} {e['width']} wide {e['planner']} {e['mode']} x{e['planning_speedup']:.2f}"
        for e in entries))
    return table


if __name__ == "__main__":
    main()
