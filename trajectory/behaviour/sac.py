"""Soft Actor-Critic (Haarnoja et al., 2018, with learned temperature) to train the behaviour policies
of the local reproductions (halfcheetah-, hopper- and walker2d-medium).

D4RL's "medium" policy was a SAC agent stopped early, at about a third of expert return. We train a
*population* of independent agents in one process: every weight has a leading member dimension, so one
batched update (``baddbmm``) serves all members. On a GPU the update costs about the same for 1 or 16
members; on a CPU two members side by side use both cores. Members share nothing but the kernels:
losses are summed over members and parameters are disjoint, so each member's gradient is its own.

Every ``eval_every`` steps each member is evaluated; a member whose mean return (mean actions, or
sampled ones with ``select_by=stochastic``, as the dataset generator acts) falls inside
``[target_low, target_high]`` is snapshotted to ``<out>/candidates`` (the first time only, unless
``keep_all_in_range``). ``python -m trajectory.behaviour.card`` then installs one as a package policy.
Every ``save_every`` steps the whole run is checkpointed (``<out>/checkpoint``); ``resume=true`` goes on
from there, so a run can span several sittings. The command line is :mod:`trajectory.behaviour.train`.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn as nn

from trajectory.behaviour.config import SACConfig
from trajectory.behaviour.policy import SquashedGaussianActor, evaluate, save_policy
from trajectory.configutil import ConfigError
from trajectory.envs import make_env
from trajectory.models.layers import EnsembleMLP


class TwinCritic(nn.Module):
    """Two Q-networks per member, stored as 2*M ensemble members."""

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.members = members
        self.net = EnsembleMLP(2 * members, obs_dim + act_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:  # -> [M, 2, N]
        x = torch.cat([obs, act], dim=-1)  # [M, N, O+A]
        m, n, d = x.shape
        x = x.unsqueeze(1).expand(m, 2, n, d).reshape(2 * m, n, d)
        return self.net(x).view(m, 2, n)


class ReplayBuffer:
    """Per-member ring buffers kept on the training device; sampling never leaves it."""

    def __init__(self, members: int, capacity: int, obs_dim: int, act_dim: int, device):
        def buf(*shape):
            return torch.zeros(members, capacity, *shape, device=device)
        self.obs, self.next_obs = buf(obs_dim), buf(obs_dim)
        self.act, self.rew, self.done = buf(act_dim), buf(), buf()
        self.members, self.capacity, self.size = members, capacity, 0
        self.rows = torch.arange(members, device=device)[:, None]

    def add(self, obs, act, rew, next_obs, done) -> None:  # each [M, ...] numpy
        i = self.size % self.capacity
        for store, value in ((self.obs, obs), (self.act, act), (self.rew, rew),
                             (self.next_obs, next_obs), (self.done, done)):
            store[:, i] = torch.as_tensor(value, dtype=torch.float32).to(store.device)
        self.size += 1

    def sample(self, batch_size: int):
        idx = torch.randint(0, min(self.size, self.capacity), (self.members, batch_size),
                            device=self.obs.device)
        return (self.obs[self.rows, idx], self.act[self.rows, idx], self.rew[self.rows, idx],
                self.next_obs[self.rows, idx], self.done[self.rows, idx])


class SACAgent:
    """The population's actors, twin critics with their targets, and temperatures, updated
    together by one batched step per environment step."""

    def __init__(self, cfg: SACConfig, obs_dim: int, act_dim: int, device):
        m = cfg.members
        self.cfg = cfg
        self.actor = SquashedGaussianActor(m, obs_dim, act_dim, cfg.hidden).to(device)
        self.critic = TwinCritic(m, obs_dim, act_dim, cfg.hidden).to(device)
        self.target = TwinCritic(m, obs_dim, act_dim, cfg.hidden).to(device)
        self.target.load_state_dict(self.critic.state_dict())
        self.target.requires_grad_(False)
        self.log_alpha = torch.zeros(m, device=device, requires_grad=True)
        self.target_entropy = -float(act_dim)
        fused = {"fused": True} if str(device).startswith("cuda") else {"foreach": True}
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, **fused)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, **fused)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr, **fused)
        self.critic_params = list(self.critic.parameters())
        self.target_params = list(self.target.parameters())

    def update(self, batch) -> dict[str, torch.Tensor]:
        obs, act, rew, next_obs, done = batch
        alpha = self.log_alpha.detach().exp()[:, None]  # [M, 1]
        with torch.no_grad():
            next_act, next_logp = self.actor.sample(next_obs)
            next_q = self.target(next_obs, next_act).min(dim=1).values  # [M, N]
            target_q = rew + self.cfg.gamma * (1 - done) * (next_q - alpha * next_logp)
        q = self.critic(obs, act)
        critic_loss = (q - target_q[:, None]).pow(2).mean(dim=(1, 2)).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        new_act, logp = self.actor.sample(obs)
        q_new = self.critic(obs, new_act).min(dim=1).values
        actor_loss = (alpha * logp - q_new).mean(dim=1).sum()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()  # also fills critic grads; they are cleared before the next critic step
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha[:, None] * (logp.detach() + self.target_entropy)).mean(1).sum()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        torch._foreach_lerp_(self.target_params, self.critic_params, self.cfg.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                "alpha": alpha.mean()}


# what must match between a checkpoint and the run resuming it
RESUME_KEYS = ("env_id", "members", "seed", "hidden", "batch_size", "gamma", "tau", "lr")


def save_training_state(path: str, cfg: SACConfig, agent: SACAgent, buffer: ReplayBuffer,
                        progress: dict) -> None:
    """Everything a run needs to go on (networks, optimizers, temperature, replay buffer, random
    states), written durably: a crash while saving keeps the previous checkpoint."""
    from trajectory.checkpoint_folder import write_checkpoint_folder

    n = min(buffer.size, buffer.capacity)
    state = {"actor": agent.actor.state_dict(), "critic": agent.critic.state_dict(),
             "target": agent.target.state_dict(), "log_alpha": agent.log_alpha.detach(),
             "actor_opt": agent.actor_opt.state_dict(), "critic_opt": agent.critic_opt.state_dict(),
             "alpha_opt": agent.alpha_opt.state_dict(), "torch_rng": torch.get_rng_state(),
             "buffer": {name: getattr(buffer, name)[:, :n].cpu()
                        for name in ("obs", "act", "rew", "next_obs", "done")}}
    meta = {**progress, "buffer_size": buffer.size,
            "config": {k: getattr(cfg, k) for k in RESUME_KEYS}}

    def write(folder: str) -> None:
        torch.save(state, os.path.join(folder, "state.pt"))
        with open(os.path.join(folder, "progress.json"), "w") as f:
            json.dump(meta, f)

    write_checkpoint_folder(path, write)


def load_training_state(out: str, cfg: SACConfig, agent: SACAgent, buffer: ReplayBuffer) -> dict:
    """Restore what :func:`save_training_state` wrote under run folder ``out`` (its checkpoint, or
    the complete one a cut-off save left beside it) into ``agent`` and ``buffer``; returns the
    progress record (step, minutes, numpy random state, ...). Nothing is changed if it cannot be."""
    from trajectory.checkpoint_folder import checkpoint_dir

    folder = checkpoint_dir(out)
    try:
        meta = json.load(open(os.path.join(folder, "progress.json")))
        state = torch.load(os.path.join(folder, "state.pt"), map_location=buffer.obs.device,
                           weights_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ConfigError(f"cannot resume from {folder} ({err}): it is missing or unreadable; start "
                          f"afresh with another out= (or delete the folder)") from None
    changed = {k: (v, getattr(cfg, k)) for k, v in meta["config"].items() if getattr(cfg, k) != v}
    if changed:
        raise ConfigError("cannot resume: " + ", ".join(f"{k} was {a!r}, now {b!r}"
                                                        for k, (a, b) in changed.items())
                          + "; resume with the same settings or start a new out=")
    if meta["buffer_size"] > buffer.capacity:
        raise ConfigError(f"cannot resume: the run has taken {meta['buffer_size']} steps, more than "
                          f"max_steps={cfg.max_steps}; raise max_steps to continue it")
    agent.actor.load_state_dict(state["actor"])
    agent.critic.load_state_dict(state["critic"])
    agent.target.load_state_dict(state["target"])
    with torch.no_grad():
        agent.log_alpha.copy_(state["log_alpha"])
    agent.actor_opt.load_state_dict(state["actor_opt"])
    agent.critic_opt.load_state_dict(state["critic_opt"])
    agent.alpha_opt.load_state_dict(state["alpha_opt"])
    torch.set_rng_state(state["torch_rng"])
    for name, saved in state["buffer"].items():
        getattr(buffer, name)[:, :saved.shape[1]] = saved
    buffer.size = meta["buffer_size"]
    return meta


def train(cfg: SACConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from trajectory.checkpoint_folder import left_aside

    checkpoint = os.path.join(cfg.out, "checkpoint")
    saved = os.path.isdir(checkpoint) or left_aside(checkpoint) is not None
    if saved and not cfg.resume:
        raise ConfigError(f"{cfg.out} already holds a SAC run: pass resume=true to continue it, or "
                          f"choose another out=")
    if cfg.resume and not saved:
        raise ConfigError(f"resume=true, but {checkpoint} does not exist: drop resume=true to start "
                          f"a new run there")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    os.makedirs(os.path.join(cfg.out, "candidates"), exist_ok=True)
    envs = [make_env(cfg.env_id) for _ in range(cfg.members)]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    agent = SACAgent(cfg, obs_dim, act_dim, device)
    buffer = ReplayBuffer(cfg.members, cfg.max_steps, obs_dim, act_dim, device)
    first_in_range: dict[int, dict] = {}
    first_step, elapsed = 1, 0.0
    if cfg.resume:
        progress = load_training_state(cfg.out, cfg, agent, buffer)
        first_step, elapsed = progress["step"] + 1, 60 * progress["minutes"]
        first_in_range = {int(k): v for k, v in progress["first_in_range"].items()}
        rng.bit_generator.state = progress["numpy_rng"]
    # a resumed run starts new episodes (seeded by the step, so they differ from the first ones)
    obs = np.stack([env.reset(seed=cfg.seed + k + 1_000_003 * (first_step - 1))[0]
                    for k, env in enumerate(envs)])
    writer = SummaryWriter(os.path.join(cfg.out, "tb"))
    log_path = os.path.join(cfg.out, "evals.jsonl")
    episode_return = np.zeros(cfg.members)
    start = time.time() - elapsed
    step = first_step - 1

    def save(at_step: int) -> None:
        save_training_state(checkpoint, cfg, agent, buffer,
                            {"step": at_step, "minutes": (time.time() - start) / 60,
                             "first_in_range": first_in_range, "numpy_rng": rng.bit_generator.state})

    bar = tqdm(range(first_step, cfg.max_steps + 1), desc="SAC", unit="step", mininterval=5,
               initial=first_step - 1, total=cfg.max_steps)
    for step in bar:
        if step <= cfg.random_steps:
            action = rng.uniform(-1, 1, size=(cfg.members, act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                x = torch.as_tensor(obs, dtype=torch.float32, device=device)[:, None]
                action = agent.actor.act(x, deterministic=False)[:, 0].cpu().numpy()
        next_obs = np.empty_like(obs)
        reward, terminal = np.zeros(cfg.members), np.zeros(cfg.members)
        finished = []
        for k, env in enumerate(envs):
            next_obs[k], reward[k], term, trunc, _ = env.step(action[k])
            terminal[k] = float(term)  # time-limit truncation still bootstraps
            episode_return[k] += reward[k]
            if term or trunc:
                finished.append(k)
                writer.add_scalar(f"train/episode_return/member{k}", episode_return[k], step)
                episode_return[k] = 0.0
        buffer.add(obs, action, reward, next_obs, terminal)
        obs = next_obs
        for k in finished:
            obs[k] = envs[k].reset()[0]
        if step > cfg.random_steps:
            stats = agent.update(buffer.sample(cfg.batch_size))
            if step % 1000 == 0:
                for name, value in stats.items():
                    writer.add_scalar(f"train/{name}", value.item(), step)
        if step % cfg.eval_every == 0:
            returns = evaluate(agent.actor, cfg.env_id, cfg.eval_episodes, 10_000 + step, device)
            record = {"step": step, "minutes": (time.time() - start) / 60,
                      "mean_return": returns.mean(1).round(1).tolist()}
            if cfg.select_by == "stochastic":
                returns = evaluate(agent.actor, cfg.env_id, cfg.eval_episodes, 20_000 + step, device,
                                   deterministic=False)
                record["stochastic_mean_return"] = returns.mean(1).round(1).tolist()
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.write(json.dumps(record))
            for k, mean in enumerate(returns.mean(1)):
                writer.add_scalar(f"eval/return/member{k}", mean, step)
                in_range = cfg.target_low <= mean <= cfg.target_high
                if in_range and (k not in first_in_range or cfg.keep_all_in_range):
                    meta = {"member": k, "seed": cfg.seed + k, "train_steps": step,
                            "wall_minutes": record["minutes"], "screen_returns": returns[k].tolist(),
                            "screen_mode": cfg.select_by, "env_id": cfg.env_id, "device": cfg.device}
                    path = os.path.join(cfg.out, "candidates", f"member{k}_step{step}.pt")
                    save_policy(path, agent.actor.member_state_dict(k), obs_dim, act_dim,
                                cfg.hidden, meta)
                    first_in_range.setdefault(k, meta)
            if cfg.stop_when_all_in_range and len(first_in_range) == cfg.members:
                break
        if cfg.save_every and step % cfg.save_every == 0:
            save(step)
        if cfg.budget_minutes and time.time() - start > 60 * cfg.budget_minutes:
            break
    if cfg.save_every and step >= first_step and step % cfg.save_every:  # the last steps, too
        save(step)
    writer.close()
    summary = {"steps": step, "minutes": (time.time() - start) / 60,
               "first_in_range": first_in_range}
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
