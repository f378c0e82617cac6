"""What the planner spends per decoded token outside the model: token filters and draws, each in
its plain torch form beside the form the planner uses, on the same [rows, bins] logits in one run.

At the halfcheetah defaults a planning step decodes ~125 tokens on 1,600 rows (25 envs x beam 32 x
expand 2) over 100 bins; every action token is drawn through the cdf filter, every observation,
reward and value token taken greedily, and every token's log-probability kept.

    python benchmarks/sampling.py [--rows 1600] [--bins 100] [--threads 2] [--readme docs/planning.md]

Prints a table and writes benchmarks/results/sampling.json.
"""
from __future__ import annotations

import argparse
import os
import platform

import torch
from cores import timed  # noqa: E402  (benchmarks/ is the script's folder)
from readme_blocks import markdown_table, publish

from planners.beam import token_log_prob
from planners.sampling import filter_cdf, filter_cdf_by_sorting, greedy, sample

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def sample_by_sorting(logits: torch.Tensor, generator: torch.Generator, cdf: float) -> torch.Tensor:
    """A draw the plain way: filtered logits, a second softmax, inverse CDF."""
    probs = filter_cdf_by_sorting(logits, cdf).softmax(dim=-1)
    cumulative = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, u, right=True).squeeze(-1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--bins", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(RESULTS, "sampling.json"))
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'sampling' block to rewrite (docs/planning.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logits = 3 * torch.randn(args.rows, args.bins)
    token = torch.randint(0, args.bins, (args.rows,))
    gen = torch.Generator()
    pairs = {  # name: (plain torch, the planner's form)
        "cdf filter (0.6)": (lambda: filter_cdf_by_sorting(logits, 0.6), lambda: filter_cdf(logits, 0.6)),
        "draw with cdf 0.6": (lambda: sample_by_sorting(logits, gen, 0.6),
                              lambda: sample(logits, gen, cdf=0.6)),
        "greedy token": (lambda: logits.argmax(-1), lambda: greedy(logits)),
        "token log-probability": (
            lambda: logits.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1),
            lambda: token_log_prob(logits, token)),
    }
    rows = {}
    print(f"{args.rows} rows x {args.bins} bins, {torch.get_num_threads()} threads")
    for name, (plain, fast) in pairs.items():
        # alternate the two forms so that drift in the machine's speed hits both alike
        plain_s, fast_s = [], []
        for _ in range(3):
            plain_s.append(timed(plain, args.repeats // 3))
            fast_s.append(timed(fast, args.repeats // 3))
        p, f = min(plain_s), min(fast_s)
        rows[name] = {"plain_ms": p * 1e3, "planner_ms": f * 1e3, "speedup": p / f}
        print(f"{name:24s} plain {p * 1e3:7.3f} ms   planner {f * 1e3:7.3f} ms   x{p / f:5.1f}")
    result = {"rows": args.rows, "bins": args.bins, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "ops": rows}
    publish(result, args.out, args.readme, "sampling", table)
    print(f"wrote {args.out}")
    return result


def table(result: dict) -> str:
    rows = [[name, f"{r['plain_ms']:.2f}", f"{r['planner_ms']:.2f}", f"{r['speedup']:.1f}x"]
            for name, r in result["ops"].items()]
    return (markdown_table(["per decoded token", "plain torch, ms>", "planner, ms>", "speed-up>"], rows)
            + f"\n\n({result['rows']} rows x {result['bins']} bins, {result['threads']} threads, "
            f"torch {result['torch']})")


if __name__ == "__main__":
    main()
