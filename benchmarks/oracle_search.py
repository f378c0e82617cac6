"""Search with a perfect model: how far choosing among data-like candidate actions by their true
outcome lifts the behaviour policy. The ceiling a learned planner's ranking works under.

    python benchmarks/oracle_search.py [--name halfcheetah-medium] [--episodes 25] [--steps 1000] \
        [--candidates 16] [--horizon 30] [--seed 1000] [--readme docs/results.md]

At every step of every episode (episode ``i`` reset with ``seed + i``, as eval.py) the dataset's
committed SAC actor proposes ``--candidates`` actions: its mean action and draws made as the dataset
generator draws (``tanh(mean + std * noise)``). Each candidate is simulated in a copy of the
environment (MuJoCo's state copied with ``set_state``): the candidate, then the mean action for the
rest of ``--horizon`` steps, rewards discounted by 0.99. The environment takes the candidate whose
simulated return is highest. With one candidate this is the mean-action policy itself.

This is what a planner would do with a perfect model of the environment and a search over the
actions the data contains, ranking them over ``--horizon`` steps. Results (mean normalized score
with its standard error and 95% interval, failed episodes by eval.py's rules) go to
``benchmarks/results/oracle_search.json`` (entries of other settings are kept) and, with ``--readme``,
to the block ``oracle_search`` of that Markdown file (docs/results.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from behaviour_policy import Episodes  # noqa: E402
from readme_blocks import load_results, markdown_table, publish  # noqa: E402

from trajectory.behaviour.policy import load_policy  # noqa: E402
from trajectory.behaviour.reproductions import REPRODUCTIONS  # noqa: E402
from trajectory.envs import make_env, normalized_score, simulator_state  # noqa: E402
from trajectory.models.critic import candidate_values, load_critic  # noqa: E402
from trajectory.score_stats import failed_episodes, format_score, summarize  # noqa: E402

RESULTS = os.environ.get("ORACLE_SEARCH_OUT", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "oracle_search.json"))
DISCOUNT = 0.99
UNLIMITED = 10 ** 9  # simulator copies jump between states: no time limit of their own


def mean_actions(actor, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return actor.act_with_noise(torch.from_numpy(obs.astype(np.float32))[None], None)[0].numpy()


def candidate_actions(actor, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """obs [E, O], noise [E, K - 1, A] -> [E, K, A]: the mean action, then the noisy draws."""
    with torch.no_grad():
        x = torch.from_numpy(obs.astype(np.float32))
        k = noise.shape[1] + 1
        repeated = x.repeat_interleave(k, dim=0)[None]  # [1, E K, O]
        eps = torch.zeros(len(obs), k, noise.shape[2])
        eps[:, 1:] = torch.from_numpy(noise)
        actions = actor.act_with_noise(repeated, eps.view(1, -1, noise.shape[2]))[0]
        return actions.view(len(obs), k, -1).numpy()


def simulated_returns(actor, copies: list, states: list, candidates: np.ndarray, horizon: int) -> np.ndarray:
    """Each candidate [E, K, A] from its env's state, then the mean action: discounted returns [E, K]."""
    envs, k, _ = candidates.shape
    for i, env in enumerate(copies):
        env.set_state(*states[i // k])
    actions = candidates.reshape(envs * k, -1)
    returns = np.zeros(envs * k)
    alive = np.ones(envs * k, dtype=bool)
    obs = np.zeros((envs * k, copies[0].observation_space.shape[0]))
    for h in range(horizon):
        if h:
            actions = mean_actions(actor, obs)
        for i in np.flatnonzero(alive):
            obs[i], reward, terminated, _, _ = copies[i].step(actions[i])
            returns[i] += DISCOUNT ** h * reward
            alive[i] = not terminated
    return returns.reshape(envs, k)


@torch.no_grad()
def critic_values(critic, obs: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The learned critic's Q of each candidate [E, K, A] at its env's observation [E, O] -> [E, K]."""
    return candidate_values(critic, torch.from_numpy(obs), torch.from_numpy(candidates)).numpy()


def critic_summary(critic, path: str) -> dict:
    """How the critic was trained (read with its weights), and a label naming it in tables and keys."""
    info = getattr(critic, "training_info", {})
    summary = {"path": path, "expectile": info.get("expectile"), "step": info.get("step")}
    summary["label"] = f"expectile {summary['expectile']}, {summary['step'] // 1000}k steps"
    return summary


def run_episodes(actor, env_id: str, seed: int, episodes: int, steps: int, candidates: int,
                 horizon: int, critic=None) -> dict:
    run = Episodes(env_id, seed, episodes, steps)
    copies = []  # simulators for the candidates, when the simulator ranks them
    for _ in range(episodes * candidates if critic is None and candidates > 1 else 0):
        env = make_env(env_id, max_episode_steps=UNLIMITED)
        env.reset(seed=0)  # gymnasium steps only reset envs; their state is set before every use
        copies.append(env.unwrapped)  # without the checking wrappers: most of the work is here
    act_dim = run.envs[0].action_space.shape[0]
    noise = np.stack([np.random.default_rng([seed, i]).standard_normal(
        (steps, candidates - 1, act_dim), dtype=np.float32) for i in range(episodes)])
    chose_mean = 0
    from tqdm import tqdm
    ranker = "critic" if critic is not None else f"x {horizon}"
    for t in tqdm(range(steps), desc=f"oracle search ({candidates} {ranker})", unit="step"):
        rows = run.rows()
        if rows.size == 0:
            break
        options = candidate_actions(actor, run.obs[rows], noise[rows, t])  # [R, K, A]
        if candidates > 1 and critic is not None:
            best = critic_values(critic, run.obs[rows], options).argmax(axis=1)
        elif candidates > 1:
            states = [simulator_state(run.envs[i]) for i in rows]
            value = simulated_returns(actor, copies[:len(rows) * candidates], states, options, horizon)
            best = value.argmax(axis=1)
        else:
            best = np.zeros(len(rows), dtype=np.int64)
        chose_mean += int((best == 0).sum())
        run.step(rows, options[np.arange(len(rows)), best], t)
    for env in copies:
        env.close()
    result = run.close()
    return {**result, "mean_action_share": chose_mean / max(1, int(result["lengths"].sum()))}


def measure(name: str, seed: int, episodes: int, steps: int, candidates: int, horizon: int,
            critic_path: str | None = None) -> dict:
    repro = REPRODUCTIONS[name]
    actor = load_policy(repro.policy)
    critic = load_critic(critic_path) if critic_path else None
    start = time.time()
    run = run_episodes(actor, repro.env_id, seed, episodes, steps, candidates, horizon, critic)
    scores = normalized_score(repro.env_id, run["returns"])
    failures = failed_episodes(run["returns"], run["first_flip"], run["fell"])
    return {"name": name, "env_id": repro.env_id, "seeds": [seed, seed + episodes - 1],
            "episodes": episodes, "max_episode_steps": steps, "candidates": candidates,
            "horizon": horizon if critic is None else 0,
            "ranker": "simulator" if critic is None else "critic",
            "critic": critic_summary(critic, critic_path) if critic is not None else None,
            "score": summarize(scores, seed=seed),
            "return_mean": float(run["returns"].mean()), "failed": len(failures),
            "failed_episodes": failures, "mean_action_share": run["mean_action_share"],
            "returns": run["returns"].tolist(), "seconds": round(time.time() - start, 1)}


def key(entry: dict) -> str:
    first, last = entry["seeds"]
    critic = entry.get("critic")
    return (f"{entry['name']}|K={entry['candidates']}|H={entry['horizon']}|{first}-{last}|"
            f"{entry['max_episode_steps']}" + (f"|critic={critic['label']}" if critic else ""))


def table(results: dict) -> str:
    rows = []
    for _, r in sorted(results.items(), key=lambda item: (item[1]["name"], bool(item[1].get("critic")),
                                                          item[1]["candidates"], item[1]["horizon"])):
        s = r["score"]
        if r["candidates"] == 1:
            ranked = "- (the mean action)"
        elif r.get("critic"):
            ranked = f"learned critic ({r['critic']['label']})"
        else:
            ranked = f"true outcome, {r['horizon']} simulated steps"
        rows.append([f"`{r['name']}`", r["candidates"], ranked,
                     f"{r['episodes']} x {r['max_episode_steps']:,}", f"{r['seeds'][0]}-{r['seeds'][1]}",
                     f"**{s['mean']:.1f}** ± {s['sem']:.1f}", f"{s['ci95'][0]:.1f}-{s['ci95'][1]:.1f}",
                     f"{100 * r['mean_action_share']:.0f}%", f"{r['failed']} of {r['episodes']}"])
    return markdown_table(["dataset", "candidates", "ranked by", "episodes x steps", "seeds",
                           "normalized (± s.e.m.)>", "95% CI>", "mean action chosen>", "failed>"], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="halfcheetah-medium", choices=sorted(REPRODUCTIONS))
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=25)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--critic", default=None,
                        help="rank the candidates by this learned critic (critic.pt) instead of "
                             "simulating them")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'oracle_search' block to rewrite (docs/results.md)")
    args = parser.parse_args(argv)
    if args.candidates < 1 or args.horizon < 1 or args.episodes < 1 or args.steps < 1:
        raise SystemExit("error: --candidates, --horizon, --episodes and --steps must be at least 1")
    torch.set_num_threads(args.threads)
    results = load_results(RESULTS)
    entry = measure(args.name, args.seed, args.episodes, args.steps, args.candidates, args.horizon,
                    args.critic)
    results[key(entry)] = entry
    ranked = (f"ranked by the critic {args.critic}" if args.critic
              else f"x {args.horizon} simulated steps")
    print(f"{args.name}, {args.candidates} candidates {ranked}: "
          f"normalized {format_score(entry['score'])}, failed {entry['failed']} of {args.episodes}, "
          f"mean action chosen {100 * entry['mean_action_share']:.0f}% ({entry['seconds']:.0f} s)")
    publish(results, RESULTS, args.readme, "oracle_search", table)


if __name__ == "__main__":
    main()
