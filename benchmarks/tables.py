"""Tables of the results files whose scripts only measure: rendered from the JSON alone.

The kind of table follows the file's name, and the block it rewrites is named after the file
(``cores.json`` -> ``<!-- cores:begin -->``):

    python benchmarks/tables.py benchmarks/results/cores.json --readme README.md
    python benchmarks/tables.py benchmarks/results/quantization.json \\
        benchmarks/results/quantization_trained.json --readme docs/int8.md
    python benchmarks/tables.py benchmarks/results/train_throughput_cuda.json \\
        benchmarks/results/train_throughput_cpu.json benchmarks/results/cpu_size_sweep_s5.json \\
        --readme docs/training.md

``cores.json`` comes from ``benchmarks/cores.py``, ``quantization*.json`` from
``benchmarks/quantization.py``, ``train_throughput_<device>.json`` from
``benchmarks/train_throughput.py`` and ``cpu_size_sweep_<core>.json`` from
``benchmarks/cpu_size_sweep.py``; run this after any of them.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from readme_blocks import markdown_table, replace_block


def threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def cores(saved: dict) -> str:
    """Parameters, training tokens/s and decode latency per core, cached step against re-running."""
    rows = [[name, f"{r['params'] / 1e3:,.0f}k", f"{r['train_tokens_per_s']:,}",
             f"{r['decode_ms_per_token_cached']:,.1f}", f"{r['decode_ms_per_token_naive']:,.0f}",
             f"{r['speedup_cached_vs_naive']:.0f}x"] for name, r in saved["cores"].items()]
    s = saved["settings"]
    note = (f"({s['n_layers']} layers x {s['d_model']} wide, {s['window']}-token window; training at batch "
            f"{s['train_batch']}; decoding at batch {s['decode_batch']:,} after {s['context']} tokens of "
            f"context; {threads(s['threads'])}, torch {s['torch']}, {s['cpu']})")
    columns = ["core", "parameters (core alone)>", "train tokens/s>", "decode ms / token, step form>",
               "decode ms / token, re-run>", "step form vs re-run>"]
    return markdown_table(columns, rows) + "\n\n" + note


def quantization(saved: dict) -> str:
    """Size, decode and planning time per core and precision; agreement with fp32 where measured."""
    names = {"none": "fp32", "dynamic": "dynamic int8", "static": "static int8"}
    agreement = any("top1_agreement" in p for c in saved["cores"].values() for p in c["precisions"].values())
    models = {c["model"] for c in saved["cores"].values()}
    one_model = len(models) == 1  # then named once, under the table
    rows = []
    for core, c in saved["cores"].items():
        for precision, p in c["precisions"].items():
            row = [core, *([] if one_model else [c["model"]]), names.get(precision, precision),
                   f"{p['bytes'] / 1e6:.2f}", f"{p['decode_ms_per_token']:,.1f}",
                   f"{p['planning_ms_per_env_step']:,.0f}"]
            if agreement:
                row += ["-" if "top1_agreement" not in p else f"{p['top1_agreement']:.3f}",
                        "-" if "kl_nats" not in p else f"{p['kl_nats']:.5f}"]
            rows.append(row)
    columns = ["core", *([] if one_model else ["model"]), "precision", "size MB>", "decode ms / token>",
               "planning ms / env step>"]
    if agreement:
        columns += ["top-1 agreement with fp32>", "KL from fp32, nats>"]
    s = saved["settings"]
    note = ((f"({models.pop()}; " if one_model else "(")
            + f"decode at batch {s['decode_batch']:,} after {s['context_tokens']} tokens; planning at "
            f"{s['envs']} envs; static scales from {s['calibration_batches']} calibration batches"
            + (f"; agreement on {s['held_out_windows']} windows" if agreement else "")
            + f"; {s['engine']} engine, {threads(s['threads'])}, torch {s['torch']}, {cpu_named(s)})")
    return markdown_table(columns, rows) + "\n\n" + note


def cpu_named(settings: dict) -> str:
    """The CPU and its int8 instructions where the results file recorded them."""
    features = settings.get("cpu_features")
    if not features:
        return settings["cpu"]
    int8 = ", ".join(features["int8_instructions"]) or "no VNNI/AMX"
    return f"{features['model']}, {int8}"


def quant_backends(saved: dict) -> str:
    """ms per call of each int8 backend beside fp32 (eager), with the speed-up, per shape."""
    names = [k for k, v in saved["shapes"][0].items() if isinstance(v, dict)]
    rows = [[row.get("network", "linear"), " x ".join(map(str, row["shape"])), f"{row['fp32_ms']:.3f}",
             *(f"{row[n]['ms']:.3f} (x{row[n]['speedup_vs_fp32']:.2f})" for n in names)]
            for row in saved["shapes"]]
    columns = ["network", "shape", "fp32 ms>", *(f"{n} ms>" for n in names)]
    s = saved["settings"]
    return (markdown_table(columns, rows) + "\n\n"
            + f"({s['engine']} engine, {threads(s['threads'])}, torch {s['torch']}, {cpu_named(s)})")


def int8_routes(saved: dict) -> str:
    """ms per plan of each route to int8 beside fp32, per model and planner."""
    routes = list(dict.fromkeys(r["route"] for r in saved["rows"]))
    cells: dict[tuple, dict] = {}
    for r in saved["rows"]:
        cells.setdefault((r["model"], r["planner"]), {})[r["route"]] = r
    rows = [[model, planner, *(f"{c[route]['ms_per_plan']:,.1f} (x{c[route]['speedup_vs_fp32']:.2f})"
                               if route in c else "-" for route in routes)]
            for (model, planner), c in cells.items()]
    s = saved["settings"]
    return (markdown_table(["model", "planner", *(f"{route}: ms / plan>" for route in routes)], rows)
            + f"\n\n({s['envs']} envs per plan; the median of {s['rounds']} rounds of {s['timed_plans']} "
              f"timed plans, the routes in turn, after 2 warm-up plans; "
              f"{threads(s['threads'])}, torch {s['torch']}, {cpu_named(s)})")


def train_throughput(saved: dict) -> str:
    """Tokens/s per size and core, fp32 eager against bf16 autocast where that was measured."""
    eager = [r for r in saved["rows"] if not r["compile"]]
    fp32 = {(r["size"], r["core"]): r for r in eager if not r["bf16"]}
    bf16 = {(r["size"], r["core"]): r for r in eager if r["bf16"]}
    sizes = {"medium": "paper", "cpu": "CPU config"}
    rows = []
    for key, r in fp32.items():
        row = [sizes.get(r["size"], r["size"]), r["core"], f"{r['params']:,}",
               f"{r['batch']} x {r['window_tokens']}", f"{r['tokens_per_s']:,.0f}"]
        if bf16:
            b = bf16.get(key)
            row += (["-", "-"] if b is None
                    else [f"{b['tokens_per_s']:,.0f}", f"{b['ratio_vs_fp32_eager']:.2f}x"])
        rows.append(row)
    columns = ["size", "core", "parameters>", "batch x tokens", "fp32 tokens/s>"]
    if bf16:
        columns += ["bf16 autocast tokens/s>", "bf16 vs fp32>"]
    note = (f"({saved['device']}, {threads(saved['threads'])}, torch {saved['torch']}; forward, backward, "
            f"AdamW step)")
    return markdown_table(columns, rows) + "\n\n" + note


def cpu_size_sweep(saved: dict) -> str:
    """Each size's loss after the tokens its training speed buys in the same minutes."""
    rows = [[r["size"], f"{r['params']:,}", f"{r['tokens_per_s']:,.0f}", f"{r['tokens'] / 1e6:,.0f}M",
             f"{r['loss']:.3f}", *(f"{r[k]:.2f}" for k in ("obs", "act", "reward", "value"))]
            for r in saved["rows"]]
    minutes = f"{saved['minutes']:g}"
    columns = ["size (d_model x layers)", "parameters>", "tokens/s>", f"tokens in {minutes} min>",
               "weighted loss>", "CE obs>", "CE act>", "CE reward>", "CE value>"]
    note = (f"({saved['core']}, batch {saved['batch']}; losses on the same {saved['eval_windows']:,} "
            f"training windows)")
    return markdown_table(columns, rows) + "\n\n" + note


KINDS: dict[str, Callable[[dict], str]] = {"cores": cores, "quantization": quantization,
                                            "quant_backends": quant_backends, "int8_routes": int8_routes,
                                            "train_throughput": train_throughput,
                                            "cpu_size_sweep": cpu_size_sweep}


def kind(path: str) -> Callable[[dict], str]:
    """The table for a results file, from its name (the longest known prefix)."""
    block = os.path.splitext(os.path.basename(path))[0]
    known = [k for k in KINDS if block == k or block.startswith(k + "_")]
    if not known:
        raise SystemExit(f"error: no table for {path}; the names known are "
                         f"{', '.join(k + '*.json' for k in KINDS)}")
    return KINDS[max(known, key=len)]


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results files (benchmarks/results/*.json)")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose blocks, named after the files, to rewrite")
    args = parser.parse_args(argv)
    texts = {}
    for path in args.results:
        render = kind(path)  # before reading: a wrong name fails at once
        with open(path) as f:
            text = render(json.load(f))
        block = os.path.splitext(os.path.basename(path))[0]
        print(f"{block}:\n{text}\n")
        if args.readme:
            replace_block(args.readme, block, text)
        texts[block] = text
    return texts


if __name__ == "__main__":
    main()
