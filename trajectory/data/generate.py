"""The halfcheetah-medium reproduction: roll the committed behaviour policy and write a Minari dataset.

D4RL's halfcheetah-medium holds 1M transitions of a SAC policy stopped at about a third of expert
return, acting *stochastically*. We do the same with ``trajectory/assets/halfcheetah_medium_policy.pt``
(stochastic return ~4,900): ``num_envs`` HalfCheetah-v5 environments step in lockstep and share one
batched policy call per step. Every episode runs to the time limit (HalfCheetah never terminates),
whose last step is recorded as a truncation (a timeout).

Determinism: episode ``k`` is reset with the ``k``-th seed of ``SeedSequence(seed)`` and its action
noise comes from its own generator ``default_rng([seed, k])``, so a seed fixes the data for a given
``num_envs`` (the batched matmul may round differently at another batch size).

The dataset is written under a hidden temporary root and renamed into ``<out>/<dataset_id>`` once
complete, so a crash never leaves a half-written dataset where loaders look.

    python -m trajectory.data.generate --episodes 1000 --seed 0 --out data/minari
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from trajectory.envs import REF_RETURNS, env_family, has_reference_returns, make_env, normalized_score

DEFAULT_POLICY = os.path.join(os.path.dirname(__file__), "..", "assets",
                              "halfcheetah_medium_policy.pt")
REPRO_NAME = "halfcheetah-medium"  # the name users pass as data.source
REPRO_ID = "trajectory/halfcheetah/medium-v0"  # its Minari id under <cache_dir>/minari
REPRO_EPISODES = 1000  # 1M transitions, as D4RL's halfcheetah-medium
REPRO_SEED = 0
REPRO_MAX_STEPS = 1000  # HalfCheetah-v5's time limit


@contextlib.contextmanager
def minari_root(path: str) -> Iterator[None]:
    """Point Minari at ``path`` for the duration of the block (it reads MINARI_DATASETS_PATH)."""
    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = os.path.abspath(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


def rollout_rounds(policy_path: str, env_id: str, episodes: int, max_steps: int, seed: int,
                   num_envs: int, progress: bool = True) -> Iterator[list]:
    """Yield lists of ``EpisodeBuffer`` (one round of up to ``num_envs`` lockstep episodes each)."""
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from tqdm import tqdm

    from trajectory.data.sac import load_policy

    actor = load_policy(policy_path)
    episode_seeds = np.random.SeedSequence(seed).generate_state(episodes, dtype=np.uint32)
    envs = [make_env(env_id, max_episode_steps=max_steps) for _ in range(min(num_envs, episodes))]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    bar = tqdm(total=episodes * max_steps, desc="generate", unit="step", unit_scale=True,
               mininterval=2, disable=not progress, file=sys.stderr)
    for first in range(0, episodes, num_envs):
        ids = list(range(first, min(first + num_envs, episodes)))
        n = len(ids)
        obs = np.zeros((n, max_steps + 1, obs_dim))  # float64, as the env returns
        act = np.zeros((n, max_steps, act_dim), dtype=np.float32)
        rew = np.zeros((n, max_steps))
        term = np.zeros((n, max_steps), dtype=bool)
        trunc = np.zeros((n, max_steps), dtype=bool)
        noise = np.stack([np.random.default_rng([seed, k]).standard_normal((max_steps, act_dim),
                                                                              dtype=np.float32)
                          for k in ids])  # [n, T, A]
        for i, k in enumerate(ids):
            obs[i, 0] = envs[i].reset(seed=int(episode_seeds[k]))[0]
        length = np.zeros(n, dtype=np.int64)
        running = np.ones(n, dtype=bool)
        for t in range(max_steps):
            live = np.flatnonzero(running)
            if live.size == 0:
                break
            with torch.no_grad():
                x = torch.from_numpy(obs[live, t].astype(np.float32))[None]  # [1, n_live, O]
                mean, log_std = actor.distribution(x)
                action = torch.tanh(mean + log_std.exp() * torch.from_numpy(noise[live, t]))
            action = action[0].numpy()  # [n_live, A]
            for j, i in enumerate(live):
                o, r, done, cut, _ = envs[i].step(action[j])
                obs[i, t + 1], act[i, t], rew[i, t] = o, action[j], r
                term[i, t], trunc[i, t] = done, cut
                length[i] = t + 1
                running[i] = not (done or cut)
            bar.update(live.size)
        yield [EpisodeBuffer(id=k, seed=int(episode_seeds[k]), observations=obs[i, :length[i] + 1],
                             actions=act[i, :length[i]], rewards=rew[i, :length[i]],
                             terminations=term[i, :length[i]], truncations=trunc[i, :length[i]])
               for i, k in enumerate(ids)]
    bar.close()
    for env in envs:
        env.close()


def _write_dataset(root: str, dataset_id: str, rounds: Iterator[list], env_id: str,
                   episodes: int, max_steps: int) -> tuple[list[float], int]:
    """Create ``dataset_id`` under ``root`` from the rounds of episodes.
    Returns the episode returns and the number of steps written."""
    import minari

    low_high = REF_RETURNS.get(env_family(env_id)) if has_reference_returns(env_id) else None
    env = make_env(env_id, max_episode_steps=max_steps)  # its spec (time limit included) is recorded
    dataset, returns, steps = None, [], 0
    with minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari nags about optional metadata
        for buffers in rounds:
            returns.extend(float(np.sum(b.rewards)) for b in buffers)
            steps += sum(len(b) for b in buffers)
            if dataset is None:
                dataset = minari.create_dataset_from_buffers(
                    dataset_id, buffers, env=env, eval_env=env_id,
                    algorithm_name="SAC behaviour policy, stochastic actions",
                    author="trajectory-planning", code_permalink="trajectory/data/generate.py",
                    ref_min_score=low_high[0] if low_high else None,
                    ref_max_score=low_high[1] if low_high else None,
                    description=f"Reproduction of D4RL's halfcheetah-medium on {env_id}: "
                                f"{episodes} episodes of {max_steps} steps by a medium SAC "
                                f"policy acting stochastically.")
            else:
                dataset.update_dataset_from_buffer(buffers)
    env.close()
    return returns, steps


def _copy_namespace_metadata(tmp_root: str, root: str, dataset_id: str) -> None:
    # Minari lists a namespace by its metadata file; give the final root the same files.
    parts = dataset_id.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        rel = os.path.join(*parts[:depth], "namespace_metadata.json")
        src, dst = os.path.join(tmp_root, rel), os.path.join(root, rel)
        if os.path.isfile(src) and not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)


def _check_readable(root: str, dataset_id: str, episodes: int) -> None:
    import minari

    with minari_root(root):
        dataset = minari.load_dataset(dataset_id)
    if dataset.total_episodes != episodes:
        raise RuntimeError(f"{dataset_id} under {root} reads back {dataset.total_episodes} episodes, "
                           f"expected {episodes}")


GENERATING_PREFIX = ".generating-"
OWNER_FILE = "owner"  # "<host> <pid>" of the process writing the folder
STALE_WITHOUT_OWNER_S = 6 * 3600  # a folder with no readable owner is left alone this long


def _owner_alive(folder: str) -> bool:
    try:
        host, pid = open(os.path.join(folder, OWNER_FILE)).read().split()
        pid = int(pid)
    except (OSError, ValueError):
        return time.time() - os.path.getmtime(folder) < STALE_WITHOUT_OWNER_S
    if host != socket.gethostname():
        return True  # another machine's process (shared disk): not ours to judge
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def remove_stale_generations(root: str) -> list[str]:
    """Delete half-written datasets (``.generating-*``, about 200 MB each) left by a generation that
    was killed; a folder whose process still runs on this machine is kept. Returns what was removed."""
    removed = []
    if not os.path.isdir(root):
        return removed
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if name.startswith(GENERATING_PREFIX) and os.path.isdir(folder) and not _owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def generate_dataset(root: str, dataset_id: str = REPRO_ID, *, episodes: int = REPRO_EPISODES,
                     max_steps: int = REPRO_MAX_STEPS, seed: int = REPRO_SEED, num_envs: int = 100,
                     policy_path: str = DEFAULT_POLICY, env_id: str = "HalfCheetah-v5",
                     progress: bool = True) -> dict:
    """Generate ``episodes`` episodes into the Minari dataset ``<root>/<dataset_id>``, atomically.

    Returns a summary: dataset path, steps, seconds, behaviour return mean/std and normalized score.
    If the dataset appears meanwhile (another process finished first), that one is kept."""
    if episodes < 1 or max_steps < 1 or num_envs < 1:
        raise ValueError("episodes, max_steps and num_envs must be positive")
    final = os.path.join(root, dataset_id)
    if os.path.exists(final):
        raise FileExistsError(f"Minari dataset already exists: {final} (delete it to regenerate)")
    os.makedirs(root, exist_ok=True)
    remove_stale_generations(root)
    start = time.time()
    tmp_root = tempfile.mkdtemp(prefix=GENERATING_PREFIX, dir=root)  # hidden: Minari skips it
    with open(os.path.join(tmp_root, OWNER_FILE), "w") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        rounds = rollout_rounds(policy_path, env_id, episodes, max_steps, seed, num_envs, progress)
        returns, steps = _write_dataset(tmp_root, dataset_id, rounds, env_id, episodes, max_steps)
        _copy_namespace_metadata(tmp_root, root, dataset_id)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if not os.path.exists(final):
            os.replace(os.path.join(tmp_root, dataset_id), final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    _check_readable(root, dataset_id, episodes)
    returns_arr = np.asarray(returns)
    summary = {"path": final, "dataset_id": dataset_id, "episodes": episodes,
               "steps": steps, "seed": seed, "num_envs": num_envs,
               "seconds": round(time.time() - start, 1),
               "return_mean": float(returns_arr.mean()), "return_std": float(returns_arr.std())}
    if has_reference_returns(env_id):
        summary["normalized_mean"] = float(normalized_score(env_id, returns_arr).mean())
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the halfcheetah-medium reproduction (or any size of it) as a local "
                    "Minari dataset, by rolling the committed behaviour policy with stochastic "
                    "actions.")
    parser.add_argument("--episodes", type=int, default=REPRO_EPISODES, help="episodes to collect")
    parser.add_argument("--max-steps", type=int, default=REPRO_MAX_STEPS,
                        help="time limit of an episode")
    parser.add_argument("--seed", type=int, default=REPRO_SEED)
    parser.add_argument("--num-envs", type=int, default=100, help="environments stepped in lockstep")
    parser.add_argument("--out", default=os.path.join("data", "minari"),
                        help="Minari root (what MINARI_DATASETS_PATH would be); the default is "
                             "where data.source=halfcheetah-medium looks with data.cache_dir=data")
    parser.add_argument("--dataset-id", default=REPRO_ID)
    parser.add_argument("--policy", default=DEFAULT_POLICY, help="behaviour policy (.pt)")
    parser.add_argument("--env-id", default="HalfCheetah-v5")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("episodes", "max_steps", "num_envs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not os.path.isfile(args.policy):
        parser.error(f"no behaviour policy at {args.policy}; pass --policy <file.pt> (the package "
                     f"ships {DEFAULT_POLICY})")
    torch.set_num_threads(args.threads)
    summary = generate_dataset(args.out, args.dataset_id, episodes=args.episodes,
                               max_steps=args.max_steps, seed=args.seed, num_envs=args.num_envs,
                               policy_path=args.policy, env_id=args.env_id)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
