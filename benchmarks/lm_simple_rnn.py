"""SimpleRNN variants: train / val / test time of the same language model, each variant side by side.

The optimisation study behind experiments.lm.simple_rnn timed one training run, one validation
run and one test run per variant. Here every variant is the same model (same weights: one state
dict loaded into each) and, per repeat, is timed on

* train: ``--steps`` optimizer steps (forward, backward, AdamW) on [batch, seq_len] windows;
* val:   ``--steps`` forward passes without gradients on the same windows;
* test:  token-by-token generation of ``seq_len`` tokens at the same batch with the step form;

repeats are interleaved across variants (variant order shuffled each round), so load changes on a
shared machine hit every variant alike. Reports the median and the spread (min, max) of each, and the
ratio of the medians to the ``simple`` batch-first loop.

    python benchmarks/lm_simple_rnn.py [--repeats 5] [--steps 5] [--batch 16] [--seq-len 128]

Prints a table and writes benchmarks/results/lm_simple_rnn.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

import torch

from experiments.lm.config import LMModelConfig
from experiments.lm.model import LanguageModel, generate
from experiments.lm.simple_rnn import VARIANTS
from trajectory.io import save_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PHASES = ("train", "val", "test")


def build(variant: str, args) -> LanguageModel:
    cfg = LMModelConfig(core="simple_rnn", d_model=args.d_model, n_layers=args.layers, dropout=0.0,
                        embedding_dropout=0.0, core_options={"variant": variant})
    return LanguageModel(cfg, args.vocab, args.seq_len)


def time_phases(model: LanguageModel, tokens: torch.Tensor, steps: int) -> dict[str, float]:
    """Wall seconds of the three phases for one model (after the caller's warm-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = tokens[:, :-1], tokens[:, 1:]
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    val = time.perf_counter() - start
    start = time.perf_counter()
    generate(model, x[:, :1], x.shape[1] - 1, temperature=0.0)
    test = time.perf_counter() - start
    return {"train": train, "val": val, "test": test}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=80)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=os.path.join(RESULTS, "lm_simple_rnn.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    torch.manual_seed(0)
    reference = build("simple", args).state_dict()
    models = {}
    for name in names:
        models[name] = build(name, args)
        models[name].load_state_dict(reference)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1))
    for model in models.values():  # warm-up (allocator, kernels)
        time_phases(model, tokens, 1)
    samples = {name: {phase: [] for phase in PHASES} for name in names}
    order = list(names)
    for r in range(args.repeats):
        random.Random(r).shuffle(order)
        for name in order:
            for phase, seconds in time_phases(models[name], tokens, args.steps).items():
                samples[name][phase].append(seconds)
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    results = summarize(samples, names)
    print_table(results, args)
    save_json({"settings": vars(args), "torch": torch.__version__, "machine": platform.processor()
               or platform.machine(), "cpu_count": os.cpu_count(), "results": results}, args.out)
    print(f"wrote {args.out}")


def summarize(samples: dict, names: list[str]) -> dict:
    out = {}
    for name in names:
        out[name] = {}
        for phase in PHASES:
            s = samples[name][phase]
            base = statistics.median(samples["simple"][phase]) if "simple" in samples else float("nan")
            out[name][phase] = {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                                "ratio_vs_simple": statistics.median(s) / base, "samples_s": s}
    return out


def print_table(results: dict, args) -> None:
    print(f"\nSimpleRNN LM, d={args.d_model}, {args.layers} layers, batch {args.batch} x {args.seq_len}, "
          f"{args.steps} steps per phase, {args.repeats} repeats, {args.threads} thread(s); "
          f"median s [min-max] (x vs simple)")
    print(f"| {'variant':<14}| " + " | ".join(f"{p + ' time (s)':<28}" for p in PHASES) + " |")
    print("|" + "-" * 15 + "|" + "|".join("-" * 30 for _ in PHASES) + "|")
    for name, row in results.items():
        cells = [f"{row[p]['median_s']:.3f} [{row[p]['min_s']:.3f}-{row[p]['max_s']:.3f}] "
                 f"(x{row[p]['ratio_vs_simple']:.2f})" for p in PHASES]
        print(f"| {name:<14}| " + " | ".join(f"{c:<28}" for c in cells) + " |")


if __name__ == "__main__":
    main()
