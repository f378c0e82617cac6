"""Install a behaviour-policy snapshot as the package's policy, with a JSON card of its evaluation.

    python -m trajectory.behaviour.card runs/sac/candidates/member4_step80000.pt \
        trajectory/behaviour/policies/halfcheetah_medium_policy.pt --episodes 10

The card records deterministic (mean action) and stochastic returns over ``episodes`` episodes, their
D4RL-normalized scores, and the training metadata stored in the snapshot (steps, seed, wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

from trajectory.behaviour.reproductions import DEFAULT_POLICY
from trajectory.envs import normalized_score


def card(snapshot: str, episodes: int, seed: int = 0) -> dict:
    import torch

    from trajectory.behaviour.policy import evaluate, load_policy
    payload = torch.load(snapshot, map_location="cpu", weights_only=True)
    env_id = payload["meta"].get("env_id", "HalfCheetah-v5")
    actor = load_policy(snapshot)
    torch.manual_seed(seed)
    result = {"env_id": env_id, "training": payload["meta"], "episodes": episodes, "eval_seed": seed}
    for mode, deterministic in (("deterministic", True), ("stochastic", False)):
        returns = evaluate(actor, env_id, episodes, seed, "cpu", deterministic)[0]
        result[mode] = {"returns": np.round(returns, 2).tolist(), "mean": float(returns.mean()),
                        "std": float(returns.std()),
                        "normalized_mean": float(normalized_score(env_id, returns).mean())}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshot")
    parser.add_argument("dest", nargs="?", default=DEFAULT_POLICY)
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.snapshot):
        parser.error(f"no policy snapshot at {args.snapshot}; pass a .pt file written by "
                     f"python -m trajectory.behaviour.train")
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    import torch  # only now: a bad argument is reported before torch loads
    torch.set_num_threads(1)
    info = card(args.snapshot, args.episodes)
    shutil.copyfile(args.snapshot, args.dest + ".tmp")
    os.replace(args.dest + ".tmp", args.dest)
    with open(os.path.splitext(args.dest)[0] + ".json", "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps({k: info[k] for k in ("deterministic", "stochastic")}, indent=1))


if __name__ == "__main__":
    main()
