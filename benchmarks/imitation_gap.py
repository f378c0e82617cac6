"""How closely a run's median policy copies the behaviour policy that made its data, state by state.

    python benchmarks/imitation_gap.py <run> [<run> ...] [--drives behaviour,model] [--episodes 10] \
        [--steps 1000] [--seed 100] [--readme docs/results.md]
    python benchmarks/imitation_gap.py table --readme docs/results.md    # the saved results again

A model trained on a dataset, read at its median action token by token, should act like the
dataset's SAC actor without its exploration noise: the median of ``tanh(mean + std * noise)`` is
``tanh(mean)``. Episodes (episode ``i`` reset with ``seed + i``, as eval.py) are driven either by the
behaviour policy's mean action (``behaviour``: the states its data visits) or by the model's median
action (``model``: the states the model's own policy reaches). At every step the model reads its
median action from the real history, as ``eval.py planner=policy policy_actions=median`` does, and
the behaviour policy gives its pre-squash mean and standard deviation at the same observation.
Measured per action dimension:

* ``|z|``: the distance of the model's action from the behaviour's mean action in units of the
  behaviour's own noise, ``|atanh(a_model) - mean| / std`` (the dataset's actions are ``|z|`` = 0.8
  on average, by construction);
* the floors: the same for the behaviour's mean action put through the run's action bins, and for
  the behaviour's mean action at the observation its tokens name (the bin centres) instead of the
  true one (what a model reading tokens can hardly avoid);
* the share of steps where some dimension is off by more than 2 (a choice the data makes about one
  time in twenty per dimension);
* where the run's dataset is on this machine, its held-out action-token cross-entropy (from its
  metrics.json) above the floor no model can beat: the entropy of the behaviour's own noise put
  through the run's action bins, on 20,000 of the dataset's observations (a model whose action
  distribution is the behaviour's, shifted by ``d`` of its standard deviations, pays about
  ``d**2 / 2`` nats per token above it).

Results go to ``benchmarks/results/imitation_gap.json`` (one entry per run, driver and seeds) and,
with ``--readme``, to the block ``imitation_gap`` of that Markdown file.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # appended: the root first would shadow the stdlib profile module
    sys.path.append(ROOT)
from behaviour_policy import Episodes  # noqa: E402  (the script's folder)
from readme_blocks import load_results, markdown_table, publish  # noqa: E402

from planners.beam import plan_actions  # noqa: E402
from planners.policy import PolicyPlanner  # noqa: E402
from planners.rollout import History, load_for_eval, transition_tokens  # noqa: E402
from trajectory.behaviour.policy import load_policy  # noqa: E402
from trajectory.behaviour.reproductions import REPRODUCTIONS  # noqa: E402
from trajectory.config import EvalConfig  # noqa: E402
from trajectory.data.sources import find_minari, load_minari_path  # noqa: E402
from trajectory.envs import normalized_score  # noqa: E402

OUT = os.environ.get("IMITATION_GAP_OUT", os.path.join(ROOT, "benchmarks", "results", "imitation_gap.json"))
DRIVERS = ("behaviour", "model")
EDGE = 1.0 - 1e-6  # atanh of a bin centre at +-1 would be infinite


def noise_units(actions: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """|atanh(action) - mean| / std: how far ``actions`` lie from the squashed Gaussian's centre,
    in its own standard deviations (per dimension)."""
    return np.abs(np.arctanh(np.clip(actions, -EDGE, EDGE)) - mean) / std


def action_ce_floor(actor, observations: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The cross-entropy no model can go below on the data's action tokens: the entropy of the
    behaviour's own noise (``tanh(mean + std * noise)``) put through the run's action bins
    ``edges [A, B + 1]``, at each observation ``[N, O]`` -> per action dimension ``[A]``, nats."""
    with torch.no_grad():
        mean, log_std = actor.distribution(torch.as_tensor(observations, dtype=torch.float32)[None])
    mean, std = mean[0].double(), log_std[0].exp().double()  # [N, A]
    cuts = torch.atanh(torch.as_tensor(edges, dtype=torch.float64).clamp(-EDGE, EDGE))
    cuts[:, 0], cuts[:, -1] = -torch.inf, torch.inf  # the end bins take the tails
    normal = torch.distributions.Normal(mean[..., None], std[..., None])
    mass = (normal.cdf(cuts[None, :, 1:]) - normal.cdf(cuts[None, :, :-1])).clamp_min(1e-12)  # [N, A, B]
    return (-(mass * mass.log()).sum(-1)).mean(0).numpy()


def ce_above_floor(checkpoint, repro, actor, states: int = 20_000) -> dict:
    """The run's held-out action-token cross-entropy (its saved metrics) beside the floor, on
    ``states`` observations of its dataset; empty where the dataset is not on this machine."""
    held_out = checkpoint.metrics.get("held_out", {}).get("ce_act")
    folder = find_minari(repro.dataset_id, checkpoint.config.data.cache_dir)
    if held_out is None or folder is None:
        print(f"{checkpoint.path}: no {repro.dataset_id} under data.cache_dir, or no held-out metrics: "
              "the action cross-entropy floor is left out", flush=True)
        return {}
    transitions = load_minari_path(folder, f"the {repro.name} reproduction")
    rows = np.random.default_rng(0).choice(len(transitions.observations), states, replace=False)
    o, a = transitions.observations.shape[1], transitions.actions.shape[1]
    floor = action_ce_floor(actor, transitions.observations[rows], checkpoint.discretizer.edges[o:o + a])
    return {"ce_act_held_out": float(held_out), "ce_act_floor": float(floor.mean()),
            "ce_act_floor_dims": floor.tolist()}


def load_subject(run: str) -> tuple:
    """The run's checkpoint and model (read as eval.py reads them), its data's reproduction and the
    behaviour policy that made it."""
    checkpoint, model = load_for_eval(EvalConfig(checkpoints_path=run), torch.device("cpu"))
    source = checkpoint.config.data.source
    if source not in REPRODUCTIONS:
        raise SystemExit(f"error: {run} was trained on '{source}', which has no behaviour policy here "
                         f"(known: {sorted(REPRODUCTIONS)})")
    repro = REPRODUCTIONS[source]
    return checkpoint, model, repro, load_policy(repro.policy)


@torch.no_grad()
def measure(run: str, subject: tuple, driver: str, seed: int, episodes: int, steps: int) -> dict:
    checkpoint, model, repro, actor = subject
    cfg = EvalConfig(checkpoints_path=run, planner="policy", policy_actions="median")
    discretizer, layout = checkpoint.discretizer, checkpoint.layout
    o, a = layout.obs_dim, layout.act_dim
    act_dims = slice(o, o + a)
    planner = PolicyPlanner(model, discretizer, layout, cfg)
    lockstep = Episodes(repro.env_id, seed, episodes, steps)
    history = History(episodes, steps, layout)
    z_model, z_floor, z_obs, gap = [], [], [], []
    start = time.time()
    for t in range(steps):
        rows = lockstep.rows()
        if rows.size == 0:
            break
        obs = lockstep.obs[rows]
        obs_tokens = discretizer.encode(obs, dims=slice(0, o))
        plan = planner.plan(torch.as_tensor(history.context(rows, obs_tokens, planner.context_transitions)))
        model_tokens, model_actions = plan_actions(plan, discretizer, o)
        mean, log_std = actor.distribution(torch.as_tensor(obs, dtype=torch.float32)[None])
        mean, std = mean[0].numpy(), log_std[0].exp().numpy()
        behaviour_actions = np.tanh(mean).astype(np.float32)
        binned = discretizer.decode(discretizer.encode(behaviour_actions, dims=act_dims), dims=act_dims)
        seen = discretizer.decode(obs_tokens, dims=slice(0, o))  # the observation as its tokens tell it
        seen_mean = actor.distribution(torch.as_tensor(seen, dtype=torch.float32)[None])[0][0].numpy()
        z_model.append(noise_units(model_actions, mean, std))
        z_floor.append(noise_units(binned, mean, std))
        z_obs.append(noise_units(np.tanh(seen_mean), mean, std))  # as the env sees it: squashed
        gap.append(np.abs(model_actions - behaviour_actions))
        if driver == "model":
            taken, taken_tokens = model_actions, model_tokens
        else:
            taken, taken_tokens = behaviour_actions, discretizer.encode(behaviour_actions, dims=act_dims)
        before = lockstep.returns[rows].copy()
        lockstep.step(rows, taken, t)
        rewards = lockstep.returns[rows] - before
        history.append(rows, transition_tokens(discretizer, layout, obs_tokens, taken_tokens, rewards))
        history.advance()
    returns = lockstep.close()["returns"]
    z_model, z_floor, z_obs, gap = (np.concatenate(x) for x in (z_model, z_floor, z_obs, gap))
    return {"run": run, "name": checkpoint.config.data.source, "driver": driver,
            "seeds": [seed, seed + episodes - 1],
            "episodes": episodes, "max_episode_steps": steps, "steps_measured": int(len(z_model)),
            "score": float(normalized_score(repro.env_id, returns).mean()), "returns": returns.tolist(),
            "z_model": z_model.mean(axis=0).tolist(), "z_floor": z_floor.mean(axis=0).tolist(),
            "z_model_mean": float(z_model.mean()), "z_floor_mean": float(z_floor.mean()),
            "z_obs_bins": z_obs.mean(axis=0).tolist(), "z_obs_bins_mean": float(z_obs.mean()),
            "obs_bins_off_by_2": float((z_obs.max(axis=1) > 2).mean()),
            "off_by_2": float((z_model.max(axis=1) > 2).mean()),
            "floor_off_by_2": float((z_floor.max(axis=1) > 2).mean()),
            "action_gap": gap.mean(axis=0).tolist(), "seconds": round(time.time() - start, 1)}


def key(entry: dict) -> str:
    first, last = entry["seeds"]
    run = os.path.basename(entry["run"].rstrip("/"))
    return f"{run}|{entry['driver']}|{first}-{last}|{entry['max_episode_steps']}"


def obs_bins(entry: dict) -> str:
    """The observation-bin floor, where the entry measured it (older entries did not)."""
    return f"{entry['z_obs_bins_mean']:.2f}" if "z_obs_bins_mean" in entry else "-"


def ce_gap(entry: dict) -> str:
    """Held-out action cross-entropy above the behaviour's noise floor, where measured."""
    if "ce_act_floor" not in entry:
        return "-"
    return f"{entry['ce_act_held_out'] - entry['ce_act_floor']:.2f} ({entry['ce_act_floor']:.2f})"


def table(results: dict) -> str:
    rows = []
    for _, r in sorted(results.items()):
        worst = int(np.argmax(r["z_model"]))
        rows.append([f"`{r['name']}`", f"`{os.path.basename(r['run'].rstrip('/'))}`", r["driver"],
                     f"{r['episodes']} x {r['max_episode_steps']:,}", f"{r['seeds'][0]}-{r['seeds'][1]}",
                     f"{r['steps_measured']:,}", f"**{r['z_model_mean']:.2f}**",
                     f"{r['z_floor_mean']:.2f}", obs_bins(r), f"{r['z_model'][worst]:.2f} (dim {worst})",
                     f"{100 * r['off_by_2']:.0f}%", f"{100 * r['floor_off_by_2']:.0f}%", ce_gap(r)])
    return markdown_table(["dataset", "run", "who acts", "episodes x steps", "seeds", "steps>", "mean abs z>",
                           "action bins alone>", "observation bins alone>", "worst dim>",
                           "steps with a dim off by > 2>", "action bins alone>",
                           "held-out action CE above the noise floor (floor), nats>"], rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders, or 'table' to reprint the saved results")
    parser.add_argument("--drives", default=",".join(DRIVERS), help=f"comma-separated, of {list(DRIVERS)}")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=100, help="first episode seed (tuning seeds)")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'imitation_gap' block to rewrite (docs/results.md)")
    args = parser.parse_args(argv)
    drivers = [d.strip() for d in args.drives.split(",") if d.strip()]
    if set(drivers) - set(DRIVERS) or args.episodes < 1 or args.steps < 1:
        parser.error(f"--drives takes {list(DRIVERS)}; --episodes and --steps at least 1")
    results = load_results(OUT)
    for run in args.runs if args.runs != ["table"] else []:
        if not os.path.isdir(run):
            parser.error(f"no run folder {run}")
        subject = load_subject(run)  # once for both drivers
        checkpoint, _, repro, actor = subject
        fit = ce_above_floor(checkpoint, repro, actor)
        for driver in drivers:
            entry = {**measure(run, subject, driver, args.seed, args.episodes, args.steps), **fit}
            results[key(entry)] = entry
            print(f"{entry['name']} ({driver} acts): mean |z| {entry['z_model_mean']:.2f} (action bins "
                  f"alone {entry['z_floor_mean']:.2f}, observation bins alone "
                  f"{entry['z_obs_bins_mean']:.2f}), "
                  f"a dim off by > 2 on {100 * entry['off_by_2']:.0f}% of "
                  f"{entry['steps_measured']} steps ({entry['seconds']} s)",
                  flush=True)
    publish(results, OUT, args.readme, "imitation_gap", table)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
