"""An exponential moving average of the weights, kept beside training and used for evaluation.

Short CPU runs end while the learning rate is still high enough for the last steps' noise to move
the weights; averaging them over the last ~1/(1 - decay) steps gives a model that predicts better
for free (Polyak averaging). The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n``
updates, so the average does not remember the random initialisation.
"""
from __future__ import annotations

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.averaged = [k for k, v in self.state.items() if v.is_floating_point()]
        self.copied = [k for k, v in self.state.items() if not v.is_floating_point()]

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for key, value in state.items():
            self.state[key].copy_(value)
        self.updates = updates

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        torch._foreach_lerp_([self.state[k] for k in self.averaged],
                             [current[k].detach() for k in self.averaged], 1.0 - decay)
        for key in self.copied:  # integer buffers are not averaged
            self.state[key].copy_(current[key])
