"""An action-value critic learned from the dataset by implicit Q-learning, to rank candidate actions.

The trajectory model predicts what follows an action; ranking a handful of similar actions by those
predictions needs them accurate to a few hundredths of a reward per step, which the models here are
not (``benchmarks/action_ranking.py``). Implicit Q-learning (Kostrikov et al., 2021) learns Q(s, a)
from the dataset's transitions alone, never querying actions the data lacks: V(s) is fitted to an
upper expectile of Q(s, a) over the data's actions at s, and Q(s, a) to r + gamma V(s'). With the
expectile at 0.5 this is the behaviour policy's own Q (SARSA); above it, Q leans towards the better
actions the data holds.

Inputs are standardized by the training data's statistics, which the critic stores, so callers give
raw observations and actions; outputs are the data's mean discounted return plus its standard
deviation times the networks' output, so training starts near the right scale instead of spending
its first hundred thousand steps bootstrapping up from zero.

Q is an ensemble (``members``, default 2, as IQL's twin critics); the pessimistic minimum over
members is both the target of V and the score of a candidate.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from trajectory.models.layers import EnsembleMLP


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared error: weight ``expectile`` where ``diff`` (target - prediction) > 0."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.square()).mean()


class ActionValueCritic(nn.Module):
    """Q ensemble over standardized (obs, action) and V over standardized obs."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, members: int = 2):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.members = obs_dim, act_dim, hidden, members
        self.q_net = EnsembleMLP(members, obs_dim + act_dim, hidden, 1)
        self.v_net = EnsembleMLP(1, obs_dim, hidden, 1)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("return_mean", torch.zeros(()))
        self.register_buffer("return_std", torch.ones(()))

    def set_normalization(self, observations: torch.Tensor, returns: torch.Tensor) -> None:
        """From the training data: observations [N, O] and the discounted returns that followed [N]."""
        self.obs_mean.copy_(observations.mean(0))
        self.obs_std.copy_(observations.std(0).clamp_min(1e-3))
        self.return_mean.copy_(returns.mean())
        self.return_std.copy_(returns.std().clamp_min(1e-3))

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        return self.return_mean + self.return_std * y.squeeze(-1)

    def _obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs.float() - self.obs_mean) / self.obs_std

    def q_members(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """obs [N, O], act [N, A] -> [members, N]."""
        x = torch.cat([self._obs(obs), act.float()], dim=-1)
        return self._out(self.q_net(x.unsqueeze(0).expand(self.members, -1, -1)))

    def q(self, obs: torch.Tensor, act: torch.Tensor, std_weight: float = 0.0) -> torch.Tensor:
        """The pessimistic Q(s, a) -> [N]: the minimum over members, or with ``std_weight`` k > 0
        their mean less k standard deviations (an ensemble's disagreement grows where the data
        is thin, so this lowers the actions it has not seen, as SAC-N / EDAC penalise them)."""
        members = self.q_members(obs, act)
        if std_weight > 0:
            return members.mean(dim=0) - std_weight * members.std(dim=0)
        return members.min(dim=0).values

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) -> [N]."""
        return self._out(self.v_net(self._obs(obs).unsqueeze(0)).squeeze(0))

    def config(self) -> dict:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": self.hidden,
                "members": self.members}


def candidate_values(critic, obs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Q of every env's candidate actions: obs [E, O], candidates [E, K, A] -> [E, K] (each
    observation repeated for its candidates)."""
    envs, k, act_dim = candidates.shape
    return critic.q(obs.float().repeat_interleave(k, dim=0),
                    candidates.reshape(envs * k, act_dim).float()).view(envs, k)


def iql_losses(critic: ActionValueCritic, target: ActionValueCritic, batch: dict, discount: float,
               expectile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(value loss, Q loss) of one batch: ``obs``, ``act``, ``reward``, ``next_obs``, ``not_done``."""
    with torch.no_grad():
        target_q = target.q(batch["obs"], batch["act"])
    value_loss = expectile_loss(target_q - critic.value(batch["obs"]), expectile)
    with torch.no_grad():
        backup = batch["reward"] + discount * batch["not_done"] * critic.value(batch["next_obs"])
    q_loss = F.mse_loss(critic.q_members(batch["obs"], batch["act"]),
                        backup.unsqueeze(0).expand(critic.members, -1))
    return value_loss, q_loss


def read_critic(path: str, device: torch.device | str = "cpu") -> tuple[ActionValueCritic, dict]:
    """A critic saved by ``train_critic.py`` (``critic.pt``: its config and weights) and what the file
    records beside them: ``expectile``, ``step``, ``discount`` and ``provenance``, what it was trained
    on (``trajectory.training.critic_provenance``; {} for critics saved before it was recorded).
    A missing or damaged file is a ConfigError naming it and the fix."""
    import os

    from trajectory.configutil import ConfigError
    from trajectory.loaders import load_torch_state
    folder = os.path.dirname(os.path.abspath(path))
    run_dir = os.path.dirname(os.path.dirname(path)) if os.path.basename(folder) == "critic" else "<run dir>"
    fix = f"retrain the critic with `python train_critic.py run={run_dir or '.'} overwrite=true`"
    if not os.path.isfile(path):
        raise ConfigError(f"no critic at {path}: train one with `python train_critic.py run=<run dir>`")
    saved = load_torch_state(path, fix, keys=("config", "state_dict"))
    try:
        critic = ActionValueCritic(**saved["config"])
        critic.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a readable critic ({str(err).splitlines()[0][:120]}); "
                          f"{fix}") from None
    info = {k: saved.get(k) for k in ("expectile", "step", "discount")}
    return critic.to(device).eval(), {**info, "provenance": saved.get("provenance") or {}}


def load_critic(path: str, device: torch.device | str = "cpu") -> ActionValueCritic:
    """:func:`read_critic`'s critic, with ``training_info`` (expectile, steps, discount) attached."""
    critic, info = read_critic(path, device)
    # how it was trained, for reports: read with the weights, so they always match
    critic.training_info = {k: info[k] for k in ("expectile", "step", "discount")}
    return critic
