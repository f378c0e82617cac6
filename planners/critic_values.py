"""The run's critic as planners read it: loaded beside the checkpoint, checked against the model's
dimensions, and fed tokens (an observation's and an action's bin centres, exactly what the planner
would send to the environment)."""
from __future__ import annotations

import torch

from planners import critic_path, run_dir_of
from planners.estimates import token_values
from trajectory.config import EvalConfig
from trajectory.configutil import ConfigError
from trajectory.models.critic import read_critic
from trajectory.models.trajectory_model import TokenLayout
from trajectory.training import critic_provenance


class TokenCritic:
    """Q of (observation tokens, action tokens), through the discretizer's bin centres."""

    def __init__(self, discretizer, layout: TokenLayout, cfg: EvalConfig, device, critic=None):
        o, a = layout.obs_dim, layout.act_dim
        self.source = None  # the file it came from (None: given as an object)
        self.training_info = getattr(critic, "training_info", {})
        if critic is None:
            self.source = critic_path(cfg)
            critic, saved = read_critic(self.source, device)
            self.training_info = {k: saved[k] for k in ("expectile", "step", "discount")}
            # what critic.pt itself records (check_planner_inputs read the metrics.json beside it)
            critic_provenance.check_critic_fits(saved["provenance"], self.source,
                                                critic_provenance.run_data_settings(cfg.checkpoints_path),
                                                run_dir_of(cfg))
        if (critic.obs_dim, critic.act_dim) != (o, a):
            raise ConfigError(f"the critic takes observations of {critic.obs_dim} and actions of "
                              f"{critic.act_dim} dimensions, the model {o} and {a}: train the critic "
                              f"on this run (python train_critic.py run=<run dir>)")
        self.critic, self.std_weight = critic, cfg.critic_std_weight
        centres = torch.as_tensor(discretizer.centres, dtype=torch.float32, device=device)  # [D, V]
        self.obs_centres, self.act_centres = centres[:o], centres[o:o + a]

    def q(self, obs_tokens: torch.Tensor, act_tokens: torch.Tensor) -> torch.Tensor:
        """obs_tokens [R, O], act_tokens [R, A] -> Q [R]."""
        obs, act = token_values(self.obs_centres, obs_tokens), token_values(self.act_centres, act_tokens)
        # the keyword only where set: critics given as objects (tests) take (obs, act) alone
        extra = {"std_weight": self.std_weight} if self.std_weight > 0 else {}
        return self.critic.q(obs, act, **extra)

    def info(self) -> dict:
        """For the eval report: which critic valued the plans, and how it was trained."""
        return {"critic": self.source, **self.training_info}


def device_of(model) -> torch.device | str:
    return next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
