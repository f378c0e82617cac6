"""fp32 vs dynamic int8 vs static int8, for every core, measured side by side in one process.

For each core and precision:

* model size on disk (the state dict as saved);
* decode latency per token at batch 1,600 (25 envs x 32 beams x 2 expansions) after 125 tokens of
  context, through the model's step form (embedding, core and heads);
* planning ms per env step (beam 32, 5 steps, 5 transitions of context, expand 2) at ``--envs``;
* with trained checkpoints (``--checkpoints gpt=runs/a,s5=runs/b``): agreement of the quantized
  model's next-token predictions with fp32 on held-out windows of the training data (top-1 and
  mean KL(fp32 || int8)); static models calibrate on other windows of the same data.

Without a checkpoint the model is TT-sized (4 layers, 128 wide) with random weights: latency and
size do not depend on the weights, agreement does, so it is left out.

    python benchmarks/quantization.py [--cores gpt,s5] [--checkpoints s5=runs/x] [--envs 5]

Prints a table and writes benchmarks/results/quantization*.json; ``python benchmarks/tables.py
benchmarks/results/quantization*.json --readme docs/int8.md`` then rewrites the tables of docs/int8.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile

import numpy as np
import torch
from cores import timed  # noqa: E402  (benchmarks/ is the script's folder)

from planners.beam import BeamPlanner, random_context
from planners.profiling import TT_LAYOUT, random_discretizer
from trajectory.checkpoint import load_checkpoint
from trajectory.config import EvalConfig, ModelConfig
from trajectory.cpu_features import read_cpu_features
from trajectory.io import save_json
from trajectory.models.cores import CORES
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel
from trajectory.quantize import calibration_windows, quantize_model, save_quantized, state_bytes

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODES = ("none", "dynamic", "static")


def load_model(core: str, checkpoint_path: str | None):
    """(model, layout, discretizer, dataset or None, description)."""
    if checkpoint_path:
        from trajectory.data.dataset import build_dataset
        checkpoint = load_checkpoint(checkpoint_path)
        dataset, _, _ = build_dataset(checkpoint.config.data)
        loss = checkpoint.metrics.get("loss")
        return (checkpoint.build_model("cpu").eval(), checkpoint.layout, checkpoint.discretizer, dataset,
                f"{checkpoint_path} (loss {loss:.3f})" if loss is not None else checkpoint_path)
    torch.manual_seed(0)
    return (TrajectoryModel(ModelConfig(core=core), TT_LAYOUT).eval(), TT_LAYOUT,
            random_discretizer(TT_LAYOUT), None,
            "random weights, TT size (4 x 128)")


@torch.no_grad()
def decode_ms(model, layout: TokenLayout, batch: int, context: int, tokens: int, repeats: int) -> float:
    prefix = torch.randint(0, layout.vocab, (batch, context))
    new = torch.randint(0, layout.vocab, (batch, tokens))
    _, prefilled = model.step(prefix, model.init_state(batch, "cpu"))

    def run():
        state = prefilled
        for t in range(tokens):
            _, state = model.step(new[:, t:t + 1], state)
    return 1e3 * timed(run, repeats) / tokens


@torch.no_grad()
def agreement(model, reference_logp: torch.Tensor, windows: torch.Tensor) -> dict:
    logp = torch.cat([model(w).log_softmax(-1) for w in windows.split(64)])
    top1 = (logp.argmax(-1) == reference_logp.argmax(-1)).float().mean().item()
    kl = (reference_logp.exp() * (reference_logp - logp)).sum(-1).mean().item()
    return {"top1_agreement": top1, "kl_nats": kl}


def measure_core(core: str, checkpoint_path: str | None, args, scratch: str) -> dict:
    model, layout, disc, dataset, description = load_model(core, checkpoint_path)
    cfg = EvalConfig(n_episodes=args.envs)
    context = random_context(layout, cfg, args.envs)
    if dataset is not None:
        rng = np.random.default_rng(1)
        held_out_index = rng.choice(len(dataset), size=args.windows, replace=False)
        held_out = dataset.batch(held_out_index)["x"]
        calibration = calibration_windows(dataset, args.calibration_batches, 64, seed=2,
                                          exclude=held_out_index)
        with torch.no_grad():
            reference = torch.cat([model(w).log_softmax(-1) for w in held_out.split(64)])
    else:
        calibration = [torch.randint(0, layout.vocab, (64, layout.max_tokens - 1))
                       for _ in range(args.calibration_batches)]
    rows = {}
    for mode in MODES:
        quantized = quantize_model(model, mode, calibration)
        path = os.path.join(scratch, f"{core}_{mode}.pt")
        size = state_bytes(model, path) if mode == "none" else save_quantized(quantized, path)
        row = {"bytes": size,
               "decode_ms_per_token": decode_ms(quantized, layout, args.batch, args.context,
                                                args.decode_tokens, args.repeats)}
        planner = BeamPlanner(quantized, disc, layout, cfg, torch.Generator().manual_seed(0))
        row["planning_ms_per_env_step"] = 1e3 * timed(lambda: planner.plan(context), args.repeats)
        if dataset is not None and mode != "none":
            row.update(agreement(quantized, reference, held_out))
        rows[mode] = row
        print(f"{core:7s} {mode:8s} {size / 1e6:6.2f} MB  decode {row['decode_ms_per_token']:8.2f} ms/token"
              f"  planning {row['planning_ms_per_env_step']:9.1f} ms/env step"
              + (f"  top-1 {row['top1_agreement']:.4f}  KL {row['kl_nats']:.5f}" if "kl_nats" in row else ""),
              flush=True)
    base = rows["none"]
    for mode in ("dynamic", "static"):
        rows[mode]["size_ratio"] = rows[mode]["bytes"] / base["bytes"]
        rows[mode]["decode_speedup"] = base["decode_ms_per_token"] / rows[mode]["decode_ms_per_token"]
        rows[mode]["planning_speedup"] = (base["planning_ms_per_env_step"]
                                          / rows[mode]["planning_ms_per_env_step"])
    return {"model": description, "parameters": model.num_parameters(), "width": model.cfg.d_model,
            "precisions": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", default=",".join(CORES))
    parser.add_argument("--checkpoints", default="", help="core=run_dir,... (trained models)")
    parser.add_argument("--envs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1600)
    parser.add_argument("--context", type=int, default=125)
    parser.add_argument("--decode-tokens", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--windows", type=int, default=512, help="held-out windows for agreement")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoints.split(",") if item)
    cores = list(checkpoints) if checkpoints else args.cores.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for core in cores:
            results[core] = measure_core(core, checkpoints.get(core), args, scratch)
    out = {"settings": {"envs": args.envs, "decode_batch": args.batch, "context_tokens": args.context,
                        "calibration_batches": args.calibration_batches, "held_out_windows": args.windows,
                        "engine": torch.backends.quantized.engine, "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                        "cpu_features": read_cpu_features().describe()},
           "cores": results}
    path = args.out or os.path.join(RESULTS, "quantization_trained.json" if checkpoints
                                    else "quantization.json")
    save_json(out, path)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
