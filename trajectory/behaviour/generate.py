"""The local reproductions of D4RL's medium datasets: roll a committed behaviour policy, write Minari.

D4RL's ``<env>-medium`` datasets hold 1M transitions of a SAC policy stopped at about a third of
expert return, acting *stochastically*. We do the same with the committed policies (one per
environment, see :mod:`trajectory.behaviour.reproductions`): ``num_envs`` environments step in
lockstep and share one batched policy call per step; a slot whose episode ends (a true terminal,
e.g. Hopper falling, or the 1,000-step time limit, recorded as a truncation) starts the next episode.

A dataset is either a number of whole episodes or a number of steps. With a step budget (as D4RL), the
episodes kept are a prefix of the episode sequence: whole episodes while they fit, then the one that
crosses the budget, cut and marked as a truncation, so exactly ``steps`` transitions are written.

Determinism: episode ``k`` is reset with the ``k``-th seed of ``SeedSequence(seed)`` and its action
noise comes from its own generator ``default_rng([seed, k])``, so a seed fixes the data for a given
``num_envs`` (the batched matmul may round differently at another batch size).

The dataset is written under a hidden temporary root and renamed into ``<out>/<dataset_id>`` once
complete, so a crash never leaves a half-written dataset where loaders look.

    python -m trajectory.behaviour.generate --source hopper-medium      # what data.source generates
    python -m trajectory.behaviour.generate --episodes 10 --out /tmp/m  # a small halfcheetah dataset
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

from trajectory.behaviour.reproductions import DEFAULT_POLICY, DEFAULT_REPRODUCTION, POLICIES, REPRODUCTIONS
from trajectory.envs import REF_RETURNS, env_family, has_reference_returns, make_env, normalized_score


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


def rollout_rounds(policy_path: str, env_id: str, *, episodes: int | None = None,
                   steps: int | None = None, max_steps: int, seed: int, num_envs: int,
                   progress: bool = True) -> Iterator[list]:
    """Yield lists of ``EpisodeBuffer`` in episode order (about ``num_envs`` per list) until
    ``episodes`` whole episodes or exactly ``steps`` transitions (the last episode cut) are out."""
    import torch
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from tqdm import tqdm

    from trajectory.behaviour.policy import load_policy

    if (episodes is None) == (steps is None):
        raise ValueError("give either episodes or steps")
    actor = load_policy(policy_path)
    envs = [make_env(env_id, max_episode_steps=max_steps)
            for _ in range(num_envs if episodes is None else min(num_envs, episodes))]
    n, obs_dim = len(envs), envs[0].observation_space.shape[0]
    act_dim = envs[0].action_space.shape[0]
    if actor.net[0].weight.shape[1] != obs_dim:
        raise ValueError(f"the policy {policy_path} takes {actor.net[0].weight.shape[1]} observation "
                         f"dimensions, {env_id} has {obs_dim}: pass the policy of this environment")
    episode_seeds = np.random.SeedSequence(seed)
    obs = np.zeros((n, max_steps + 1, obs_dim))  # float64, as the env returns
    act = np.zeros((n, max_steps, act_dim), dtype=np.float32)
    rew = np.zeros((n, max_steps))
    term = np.zeros((n, max_steps), dtype=bool)
    trunc = np.zeros((n, max_steps), dtype=bool)
    noise = np.zeros((n, max_steps, act_dim), dtype=np.float32)
    episode_of = np.full(n, -1, dtype=np.int64)  # which episode each slot runs (-1: idle)
    t = np.zeros(n, dtype=np.int64)  # steps taken in the slot's episode
    launched = taken = emitted = 0
    finished: dict[int, EpisodeBuffer] = {}
    seeds: list[int] = []
    budget = episodes * max_steps if steps is None else steps
    bar = tqdm(total=budget, desc="generate", unit="step", unit_scale=True, mininterval=2,
               disable=not progress, file=sys.stderr)

    def launch(i: int) -> None:
        nonlocal launched
        k = launched
        if len(seeds) <= k:  # generate_state is prefix-stable: a longer draw keeps the first seeds
            seeds[:] = episode_seeds.generate_state(max(2 * len(seeds), k + 1, n), dtype=np.uint32).tolist()
        episode_of[i], t[i] = k, 0
        noise[i] = np.random.default_rng([seed, k]).standard_normal((max_steps, act_dim),
                                                                    dtype=np.float32)
        obs[i, 0] = envs[i].reset(seed=seeds[k])[0]
        launched += 1

    def may_launch() -> bool:
        return launched < episodes if steps is None else taken < steps

    for i in range(n):
        launch(i)
    next_out, out = 0, []
    while emitted < budget if steps is not None else next_out < episodes:
        live = np.flatnonzero(episode_of >= 0)
        if live.size == 0:
            break
        # every slot, idle ones too: a batch of fixed size rounds the same whatever the other slots
        # do, so an episode's actions do not depend on the budget that ends its neighbours
        step = np.minimum(t, max_steps - 1)
        with torch.no_grad():
            x = torch.from_numpy(obs[np.arange(n), step].astype(np.float32))[None]  # [1, n, O]
            action = actor.act_with_noise(x, torch.from_numpy(noise[np.arange(n), step]))[0].numpy()
        for i in live:
            s = t[i]
            o, r, done, cut, _ = envs[i].step(action[i])
            obs[i, s + 1], act[i, s], rew[i, s], term[i, s], trunc[i, s] = o, action[i], r, done, cut
            t[i] += 1
            taken += 1
            if done or cut:
                k, length = int(episode_of[i]), int(t[i])
                finished[k] = EpisodeBuffer(id=k, seed=seeds[k], observations=obs[i, :length + 1].copy(),
                                            actions=act[i, :length].copy(), rewards=rew[i, :length].copy(),
                                            terminations=term[i, :length].copy(),
                                            truncations=trunc[i, :length].copy())
                episode_of[i] = -1
                if may_launch():
                    launch(i)
        bar.update(live.size)
        while next_out in finished and (steps is None or emitted < steps):
            buffer = finished.pop(next_out)
            if steps is not None and emitted + len(buffer) > steps:
                buffer = _cut(buffer, steps - emitted)
            out.append(buffer)
            emitted += len(buffer)
            next_out += 1
        if len(out) >= n:
            yield out
            out = []
    if out:
        yield out
    bar.close()
    for env in envs:
        env.close()


def _cut(buffer, length: int):
    """The first ``length`` steps of an episode, its last step marked as a truncation (unless it is
    the episode's true terminal): the dataset's step budget ended the episode."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    truncations = buffer.truncations[:length].copy()
    terminations = buffer.terminations[:length].copy()
    truncations[-1] = not terminations[-1]
    return EpisodeBuffer(id=buffer.id, seed=buffer.seed, observations=buffer.observations[:length + 1],
                         actions=buffer.actions[:length], rewards=buffer.rewards[:length],
                         terminations=terminations, truncations=truncations)


def _write_dataset(root: str, dataset_id: str, rounds: Iterator[list], env_id: str,
                   description: str, max_steps: int) -> tuple[list[float], list[int], int]:
    """Create ``dataset_id`` under ``root`` from the rounds of episodes.
    Returns the returns of the episodes that ended on their own (a terminal or the time limit; not
    one the step budget cut), how many ended at a true terminal, and the number of steps written."""
    import minari

    low_high = REF_RETURNS.get(env_family(env_id)) if has_reference_returns(env_id) else None
    env = make_env(env_id, max_episode_steps=max_steps)  # its spec (time limit included) is recorded
    dataset, returns, terminated, steps = None, [], [], 0
    with minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari nags about optional metadata
        for buffers in rounds:
            returns.extend(float(np.sum(b.rewards)) for b in buffers
                           if b.terminations[-1] or len(b) == max_steps)
            terminated.extend(int(b.terminations[-1]) for b in buffers)
            steps += sum(len(b) for b in buffers)
            if dataset is None:
                dataset = minari.create_dataset_from_buffers(
                    dataset_id, buffers, env=env, eval_env=env_id,
                    algorithm_name="SAC behaviour policy, stochastic actions",
                    author="trajectory-planning", code_permalink="trajectory/behaviour/generate.py",
                    ref_min_score=low_high[0] if low_high else None,
                    ref_max_score=low_high[1] if low_high else None,
                    description=description)
            else:
                dataset.update_dataset_from_buffer(buffers)
    env.close()
    return returns, terminated, steps


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


def generate_dataset(root: str, dataset_id: str = DEFAULT_REPRODUCTION.dataset_id, *,
                     episodes: int | None = None, steps: int | None = None,
                     max_steps: int = DEFAULT_REPRODUCTION.max_steps,
                     seed: int = DEFAULT_REPRODUCTION.seed, num_envs: int = 100,
                     policy_path: str = DEFAULT_POLICY, env_id: str = DEFAULT_REPRODUCTION.env_id,
                     progress: bool = True) -> dict:
    """Generate ``episodes`` whole episodes, or exactly ``steps`` transitions, into the Minari dataset
    ``<root>/<dataset_id>``, atomically.

    Returns a summary: dataset path, episodes, steps, seconds, behaviour return mean/std (of the
    episodes that ended by termination or time limit, not the one the budget cut), normalized score."""
    if (episodes is None) == (steps is None):
        raise ValueError("give either episodes or steps")
    if (episodes or steps) < 1 or max_steps < 1 or num_envs < 1:
        raise ValueError("episodes/steps, max_steps and num_envs must be positive")
    if not os.path.isfile(policy_path):
        raise FileNotFoundError(f"behaviour policy not found: {policy_path}")
    final = os.path.join(root, dataset_id)
    if os.path.exists(final):
        raise FileExistsError(f"Minari dataset already exists: {final} (delete it to regenerate)")
    os.makedirs(root, exist_ok=True)
    remove_stale_generations(root)
    start = time.time()
    size = f"{episodes} episodes" if steps is None else f"{steps} steps"
    description = (f"Reproduction of D4RL's medium dataset on {env_id}: {size} (episodes of at most "
                   f"{max_steps} steps) by a medium SAC policy acting stochastically.")
    tmp_root = tempfile.mkdtemp(prefix=GENERATING_PREFIX, dir=root)  # hidden: Minari skips it
    with open(os.path.join(tmp_root, OWNER_FILE), "w") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        rounds = rollout_rounds(policy_path, env_id, episodes=episodes, steps=steps,
                                max_steps=max_steps, seed=seed, num_envs=num_envs, progress=progress)
        returns, terminated, written = _write_dataset(tmp_root, dataset_id, rounds, env_id,
                                                      description, max_steps)
        _copy_namespace_metadata(tmp_root, root, dataset_id)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if not os.path.exists(final):
            os.replace(os.path.join(tmp_root, dataset_id), final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    _check_readable(root, dataset_id, len(terminated))
    complete = np.asarray(returns)
    summary = {"path": final, "dataset_id": dataset_id, "env_id": env_id, "episodes": len(terminated),
               "terminated_episodes": int(np.sum(terminated)), "steps": written, "seed": seed,
               "num_envs": num_envs, "seconds": round(time.time() - start, 1),
               "return_mean": float(complete.mean()), "return_std": float(complete.std())}
    if has_reference_returns(env_id):
        summary["normalized_mean"] = float(normalized_score(env_id, complete).mean())
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate a local reproduction of a D4RL medium dataset (or any size of one) as "
                    "a Minari dataset, by rolling a committed behaviour policy with stochastic "
                    "actions.")
    parser.add_argument("--source", default=DEFAULT_REPRODUCTION.name, choices=sorted(REPRODUCTIONS),
                        help="which reproduction: its environment, policy, dataset id and size")
    parser.add_argument("--episodes", type=int, default=None,
                        help="whole episodes to collect (default: the reproduction's step budget)")
    parser.add_argument("--steps", type=int, default=None,
                        help="transitions to collect, the last episode cut (default: 1,000,000)")
    parser.add_argument("--max-steps", type=int, default=None, help="time limit of an episode")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-envs", type=int, default=100, help="environments stepped in lockstep")
    parser.add_argument("--out", default=os.path.join("data", "minari"),
                        help="Minari root (what MINARI_DATASETS_PATH would be); the default is "
                             "where data.source=<name> looks with data.cache_dir=data")
    parser.add_argument("--dataset-id", default=None, help="default: the reproduction's")
    parser.add_argument("--policy", default=None, help="behaviour policy (.pt); default: the "
                                                        "reproduction's")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    repro = REPRODUCTIONS[args.source]
    if args.episodes is not None and args.steps is not None:
        parser.error("give --episodes or --steps, not both")
    for name in ("episodes", "steps", "max_steps", "num_envs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    policy = args.policy or repro.policy
    if not os.path.isfile(policy):
        parser.error(f"no behaviour policy at {policy}; pass --policy <file.pt> (the package ships "
                     f"one per reproduction in {POLICIES})")
    import torch  # only now: a bad argument is reported before torch loads
    torch.set_num_threads(args.threads)
    steps = None if args.episodes is not None else (args.steps or repro.steps)
    summary = generate_dataset(args.out, args.dataset_id or repro.dataset_id, episodes=args.episodes,
                               steps=steps, max_steps=args.max_steps or repro.max_steps,
                               seed=repro.seed if args.seed is None else args.seed,
                               num_envs=args.num_envs, policy_path=policy, env_id=repro.env_id)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
