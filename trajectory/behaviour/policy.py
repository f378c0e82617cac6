"""The behaviour policy: a tanh-squashed Gaussian actor (SAC's), one per member of a population,
saved alone as a 1-member actor with plain metadata, and evaluated on its environment."""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trajectory.envs import make_env
from trajectory.io import save_torch
from trajectory.loaders import load_torch_state
from trajectory.models.layers import EnsembleMLP

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class SquashedGaussianActor(nn.Module):
    """tanh-squashed diagonal Gaussian policy; one per member."""

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = EnsembleMLP(members, obs_dim, hidden, 2 * act_dim)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        # squash log_std smoothly into [LOG_STD_MIN, LOG_STD_MAX]
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action in [-1, 1] and its log-probability.  obs: [M, N, O]."""
        mean, log_std = self.distribution(obs)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        action = torch.tanh(pre_tanh)
        # log N(u; mean, std) - log|d tanh(u)/du|, the latter in a numerically stable form
        log_prob = (-0.5 * ((pre_tanh - mean) / log_std.exp()).pow(2) - log_std
                    - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return action, log_prob

    def act_with_noise(self, obs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """tanh(mean + std * noise) for the given standard-normal ``noise`` (the dataset generator's
        own draws), or the mean action tanh(mean) for None.  obs: [M, N, O]."""
        mean, log_std = self.distribution(obs)
        return torch.tanh(mean if noise is None else mean + log_std.exp() * noise)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.act_with_noise(obs, None) if deterministic else self.sample(obs)[0]

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """The weights of one member, as a 1-member actor's state dict."""
        return {k: v[member:member + 1].detach().cpu().clone() for k, v in self.state_dict().items()}



def evaluate(actor: SquashedGaussianActor, env_id: str, episodes: int, seed: int,
             device, deterministic: bool = True) -> np.ndarray:
    """Mean-action returns of every member over ``episodes`` episodes run in lockstep: [M, E]."""
    members = actor.net[0].weight.shape[0]
    envs = [[make_env(env_id) for _ in range(episodes)] for _ in range(members)]
    obs = np.stack([[env.reset(seed=seed + 1000 * m + e)[0] for e, env in enumerate(row)]
                    for m, row in enumerate(envs)])
    returns = np.zeros((members, episodes))
    running = np.ones((members, episodes), dtype=bool)
    with torch.no_grad():
        while running.any():
            actions = actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device),
                                deterministic).cpu().numpy()
            for m in range(members):
                for e in range(episodes):
                    if not running[m, e]:
                        continue
                    obs[m, e], r, term, trunc, _ = envs[m][e].step(actions[m, e])
                    returns[m, e] += r
                    running[m, e] = not (term or trunc)
    for row in envs:
        for env in row:
            env.close()
    return returns


def save_policy(path: str, state: dict, obs_dim: int, act_dim: int, hidden: int, meta: dict) -> None:
    """Write a 1-member actor atomically, with plain metadata (loadable with weights_only=True)."""
    payload = {"state_dict": state, "obs_dim": obs_dim, "act_dim": act_dim, "hidden": hidden,
               "meta": meta}
    save_torch(payload, path)


def load_policy(path: str, device="cpu") -> SquashedGaussianActor:
    """Rebuild a saved behaviour policy (a 1-member actor)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"behaviour policy not found: {path}")
    payload = load_torch_state(path, "train the behaviour policy again (docs/data.md says how)",
                               keys=("state_dict", "obs_dim", "act_dim", "hidden"))
    actor = SquashedGaussianActor(1, payload["obs_dim"], payload["act_dim"], payload["hidden"])
    actor.load_state_dict(payload["state_dict"])
    return actor.to(device).eval()

