"""The behaviour policy that made each dataset, scored by the score protocol: the reference a
planner trained on its data has to beat.

    python benchmarks/behaviour_policy.py [--names halfcheetah-medium] [--seed 1000] \
        [--episodes 25] [--steps 1000] [--readme docs/data.md]

For each reproduction (``trajectory/behaviour/reproductions.py``) the committed SAC actor acts two
ways, on the same environment seeds as ``eval.py`` (episode ``i`` reset with ``seed + i``): its mean
action, and an action sampled as the dataset generator samples it (``tanh(mean + std * noise)``, the
noise of episode ``i`` from ``default_rng([seed, i])``). Each gives the mean normalized score with
its standard error and 95% bootstrap interval, and the failed episodes by the same rules as
``eval.py`` (a fall, the torso past 90 degrees, or a return below 0). Results go to
``benchmarks/results/behaviour_policy.json`` (entries of other settings are kept) and, with
``--readme``, to the block ``behaviour_policy`` of that Markdown file (docs/data.md).

The sampled row is what the dataset holds; the mean-action row is what the same policy scores once
its exploration noise is taken away, which is also roughly what a model that copies the data's most
likely action can reach without knowing anything the data does not show.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from readme_blocks import load_results, markdown_table, publish  # noqa: E402

from trajectory.behaviour.policy import load_policy  # noqa: E402
from trajectory.behaviour.reproductions import REPRODUCTIONS  # noqa: E402
from trajectory.envs import make_env, normalized_score, torso_angle_index, torso_flipped  # noqa: E402
from trajectory.score_stats import failed_episodes, format_score, summarize  # noqa: E402

RESULTS = os.environ.get("BEHAVIOUR_POLICY_OUT", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "behaviour_policy.json"))
MODES = ("mean action", "sampled")


class Episodes:
    """``count`` episodes of ``env_id`` in lockstep (episode ``i`` reset with ``seed + i``, as eval.py):
    their observations, returns, lengths, and each one's first flip and fall step."""

    def __init__(self, env_id: str, seed: int, count: int, steps: int):
        self.envs = [make_env(env_id, max_episode_steps=steps) for _ in range(count)]
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)])
        self.angle_index = torso_angle_index(env_id)
        self.returns, self.lengths = np.zeros(count), np.zeros(count, dtype=np.int64)
        self.first_flip = np.full(count, -1, dtype=np.int64)
        self.fell = np.full(count, -1, dtype=np.int64)
        self.active = np.ones(count, dtype=bool)

    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.active)

    def step(self, rows: np.ndarray, actions: np.ndarray, t: int) -> None:
        """Env ``rows[j]`` takes ``actions[j]`` at step ``t``."""
        for j, i in enumerate(rows):
            self.obs[i], reward, terminated, truncated, _ = self.envs[i].step(actions[j])
            self.returns[i] += reward
            self.lengths[i] += 1
            if (self.angle_index is not None and self.first_flip[i] < 0
                    and torso_flipped(self.obs[i, self.angle_index])):
                self.first_flip[i] = t
            if terminated:
                self.fell[i] = t
            if terminated or truncated:
                self.active[i] = False

    def close(self) -> dict:
        for env in self.envs:
            env.close()
        return {"returns": self.returns, "lengths": self.lengths, "first_flip": self.first_flip,
                "fell": self.fell}


def run_episodes(actor, env_id: str, seed: int, episodes: int, steps: int, sampled: bool) -> dict:
    """``episodes`` episodes in lockstep: returns, lengths, and each one's first flip and fall step."""
    run = Episodes(env_id, seed, episodes, steps)
    act_dim = run.envs[0].action_space.shape[0]
    noise = np.stack([np.random.default_rng([seed, i]).standard_normal((steps, act_dim), dtype=np.float32)
                      for i in range(episodes)])
    for t in range(steps):
        rows = run.rows()
        if rows.size == 0:
            break
        with torch.no_grad():
            x = torch.from_numpy(run.obs[rows].astype(np.float32))[None]  # [1, rows, O]
            eps = torch.from_numpy(noise[rows, t]) if sampled else None  # None: the mean action
            actions = actor.act_with_noise(x, eps)[0].numpy()
        run.step(rows, actions, t)
    return run.close()


def measure(name: str, mode: str, seed: int, episodes: int, steps: int) -> dict:
    repro = REPRODUCTIONS[name]
    actor = load_policy(repro.policy)
    start = time.time()
    run = run_episodes(actor, repro.env_id, seed, episodes, steps, sampled=mode == "sampled")
    scores = normalized_score(repro.env_id, run["returns"])
    failures = failed_episodes(run["returns"], run["first_flip"], run["fell"])
    return {"name": name, "env_id": repro.env_id, "policy": os.path.basename(repro.policy),
            "mode": mode, "seeds": [seed, seed + episodes - 1], "episodes": episodes,
            "max_episode_steps": steps, "score": summarize(scores, seed=seed),
            "return_mean": float(run["returns"].mean()), "mean_length": float(run["lengths"].mean()),
            "failed": len(failures), "failed_episodes": failures,
            "returns": run["returns"].tolist(), "seconds": round(time.time() - start, 1)}


def key(entry: dict) -> str:
    first, last = entry["seeds"]
    return f"{entry['name']}|{entry['mode']}|{first}-{last}|{entry['max_episode_steps']}"


def table(results: dict) -> str:
    rows = []
    for _, r in sorted(results.items()):
        s = r["score"]
        rows.append([f"`{r['name']}`", r["mode"], f"{r['episodes']} x {r['max_episode_steps']:,}",
                     f"{r['seeds'][0]}-{r['seeds'][1]}", f"**{s['mean']:.1f}** ± {s['sem']:.1f}",
                     f"{s['ci95'][0]:.1f}-{s['ci95'][1]:.1f}", f"{r['return_mean']:,.0f}",
                     f"{r['failed']} of {r['episodes']}"])
    return markdown_table(["dataset", "behaviour policy acts by", "episodes x steps", "seeds",
                           "normalized (± s.e.m.)>", "95% CI>", "mean return>", "failed>"], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", default="halfcheetah-medium",
                        help=f"comma-separated reproductions, of {sorted(REPRODUCTIONS)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=25)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'behaviour_policy' block to rewrite (docs/data.md)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(names) - set(REPRODUCTIONS)) + sorted(set(modes) - set(MODES))
    if unknown or args.episodes < 1 or args.steps < 1:
        parser.error(f"unknown names or modes {unknown}; known: {sorted(REPRODUCTIONS)}, {list(MODES)}"
                     if unknown else "--episodes and --steps must be at least 1")
    results = load_results(RESULTS)
    for name in names:
        for mode in modes:
            entry = measure(name, mode, args.seed, args.episodes, args.steps)
            results[key(entry)] = entry
            print(f"{name}, {mode}: {format_score(entry['score'])}, {entry['failed']} failed "
                  f"({entry['seconds']} s)", flush=True)
    publish(results, RESULTS, args.readme, "behaviour_policy", table)
    print(table(results))


if __name__ == "__main__":
    main()
