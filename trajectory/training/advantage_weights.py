"""Advantage-weighted action tokens: a model whose proposals lean towards what a critic values.

The critic planner ranks the model's candidate actions; the candidates are only as good as the
behaviour the model imitates. Weighting each transition's action-token loss by
``exp(beta * A / std(A))`` (clipped at ``max_weight``, then scaled to mean 1 over the data), where
``A = Q(s, a) - V(s)`` comes from an IQL critic trained on the same data, makes the likelihood of
better-than-usual actions count more, as advantage-weighted regression (AWR, IQL's policy
extraction, QT) does; observation, reward and value tokens keep weight 1, so the model still learns
the dynamics it plans with. Dividing by A's spread makes ``beta`` comparable across environments
whose returns differ in scale.

The critic sees observations and actions as their tokens' bin centres, as the planners feed it.
"""
from __future__ import annotations

import os

import numpy as np

from trajectory.configutil import ConfigError


def advantages(critic, obs: np.ndarray, act: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """A(s, a) = Q(s, a) - V(s) per row (float64), computed in chunks."""
    import torch  # here: the checks of this module run before torch loads
    out = []
    with torch.no_grad():
        for start in range(0, len(obs), chunk):
            o = torch.as_tensor(obs[start:start + chunk], dtype=torch.float32)
            a = torch.as_tensor(act[start:start + chunk], dtype=torch.float32)
            out.append((critic.q(o, a) - critic.value(o)).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def weights_from_advantages(adv: np.ndarray, beta: float, max_weight: float) -> np.ndarray:
    """exp(beta * A / std(A)), clipped at ``max_weight``, scaled to mean 1 (float32)."""
    if len(adv) == 0:
        return np.zeros(0, dtype=np.float32)
    scale = adv.std() if adv.std() > 0 else 1.0
    weights = np.minimum(np.exp(np.clip(beta * (adv - adv.mean()) / scale, None, 50.0)), max_weight)
    return (weights / weights.mean()).astype(np.float32)


def transition_weights(tokens: np.ndarray, valid: np.ndarray, centres: np.ndarray, obs_dim: int,
                       act_dim: int, critic, beta: float, max_weight: float) -> np.ndarray:
    """Per row of a token stream [N, D] (``valid`` marks real transitions, the rest is padding):
    the weight of its action tokens; 1 on padding."""
    rows = tokens[valid]
    obs = np.stack([centres[d, rows[:, d]] for d in range(obs_dim)], axis=1)
    act = np.stack([centres[obs_dim + d, rows[:, obs_dim + d]] for d in range(act_dim)], axis=1)
    out = np.ones(len(tokens), dtype=np.float32)
    out[valid] = weights_from_advantages(advantages(critic, obs, act), beta, max_weight)
    return out


def summary(weights: np.ndarray) -> dict:
    """What a run reports about its weights: the largest, and the effective sample size's share
    ((sum w)^2 / (n sum w^2): 1 when all weights are equal)."""
    if len(weights) == 0:
        return {"max": 0.0, "effective_share": 0.0}
    return {"max": float(weights.max()),
            "effective_share": float(weights.sum() ** 2 / (len(weights) * np.square(weights).sum()))}


def load_weighting_critic(path: str, data_cfg, run_dir: str):
    """The critic at ``path``, checked to be trained on the data this run trains on."""
    from trajectory.models.critic import read_critic
    from trajectory.training import critic_provenance
    critic, saved = read_critic(path, "cpu")
    settings = {k: getattr(data_cfg, k) for k in critic_provenance.COMPARED if hasattr(data_cfg, k)}
    critic_provenance.check_critic_fits(saved.get("provenance", {}), path, settings, run_dir)
    return critic.eval()


def weighting_critic_path(train_cfg, run_dir: str) -> str:
    """``train.advantage_critic``, or the run's own critic (``<run>/critic/critic.pt``)."""
    from trajectory.checkpoint_folder import critic_folder
    return train_cfg.advantage_critic or os.path.join(critic_folder(run_dir), "critic.pt")


def uses_own_critic(train_cfg) -> bool:
    """Weighted by the run's own critic: ``overwrite=true`` must keep that critic."""
    return train_cfg.advantage_beta > 0 and not train_cfg.advantage_critic


def check_weighting_inputs(train_cfg, run_dir: str) -> None:
    """Torch-free: a weighting critic that is not there, in one line naming how to train it."""
    if train_cfg.advantage_beta <= 0:
        return
    path = weighting_critic_path(train_cfg, run_dir)
    if os.path.isfile(path):
        return
    if uses_own_critic(train_cfg):
        raise ConfigError(f"train.advantage_beta={train_cfg.advantage_beta:g} weights action tokens by the "
                          f"run's own critic, and {path} is not there yet: train it first, before the "
                          f"model (python train_critic.py recipe=<this train.py config> run={run_dir}), or "
                          f"name another critic of this data with train.advantage_critic=<critic.pt>")
    raise ConfigError(f"train.advantage_beta={train_cfg.advantage_beta:g} weights action tokens by a "
                      f"critic's advantages, and train.advantage_critic="
                      f"'{train_cfg.advantage_critic}' is not a file: train one on this data "
                      f"(python train_critic.py run=<a run of the same data>) and pass its critic.pt")
