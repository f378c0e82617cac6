"""Metrics on windows of whole episodes that training never sees.

Teacher-forced on up to ``n_windows`` fixed windows of the held-out episodes:

- cross-entropy per token group (obs, act, reward, value), as the training loss reports them;
- the predicted next observation and reward (expectation over bin centres) against the true
  values, as mean absolute errors in the data's own units;
- value calibration: the predicted value-to-go against the realised discounted return-to-go
  (decoded from its token, so within half a bin): correlation, regression slope, the ratio of the
  spreads and the mean absolute error. A value head at chance has correlation ~0 and spread ~0.
"""
from __future__ import annotations

import numpy as np
import torch

from trajectory.models.trajectory_model import GROUP_NAMES


class HeldOutMetrics:
    def __init__(self, dataset, discretizer, layout, n_windows: int = 512, batch_size: int = 128,
                 seed: int = 0):
        self.layout, self.batch_size = layout, batch_size
        rng = np.random.default_rng(seed)
        count = min(n_windows, len(dataset))
        self.index = np.sort(rng.choice(len(dataset), size=count, replace=False))
        self.dataset = dataset
        self.centres = torch.as_tensor(discretizer.centres, dtype=torch.float32)  # [D, V]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        td, o, a = self.layout.transition_dim, self.layout.obs_dim, self.layout.act_dim
        centres = self.centres.to(device)
        ce_sum = torch.zeros(len(GROUP_NAMES), device=device)
        ce_count = torch.zeros(len(GROUP_NAMES), device=device)
        obs_err, reward_err, values_pred, values_true = [], [], [], []
        for start in range(0, len(self.index), self.batch_size):
            batch = self.dataset.batch(self.index[start:start + self.batch_size])
            x, y, mask = (batch[k].to(device) for k in ("x", "y", "mask"))
            logits = model(x).float()  # [B, T, V]
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
            dims = (torch.arange(y.shape[1], device=device) + 1) % td  # target dimension [T]
            groups = model.dim_groups[dims]
            for g in range(len(GROUP_NAMES)):
                selected = mask * (groups == g)
                ce_sum[g] += (ce * selected).sum()
                ce_count[g] += selected.sum()
            expected = (logits.softmax(-1) * centres[dims]).sum(-1)  # [B, T] in real units
            truth = centres[dims, y]  # [B, T] bin centres of the targets
            valid = mask > 0
            obs_err.append((expected - truth).abs()[valid & (dims < o)])
            reward_err.append((expected - truth).abs()[valid & (dims == o + a)])
            is_value = valid & (dims == td - 1)
            values_pred.append(expected[is_value])
            values_true.append(truth[is_value])
        model.train(was_training)
        ce = (ce_sum / ce_count.clamp_min(1)).tolist()
        out = {f"ce_{name}": value for name, value in zip(GROUP_NAMES, ce)}
        out["obs_mae"] = float(torch.cat(obs_err).mean())
        out["reward_mae"] = float(torch.cat(reward_err).mean())
        out.update(value_calibration(torch.cat(values_pred).cpu().numpy(),
                                     torch.cat(values_true).cpu().numpy()))
        return out


def value_calibration(predicted: np.ndarray, realised: np.ndarray) -> dict[str, float]:
    """Correlation, least-squares slope of realised on predicted, spread ratio and MAE."""
    predicted, realised = predicted.astype(np.float64), realised.astype(np.float64)
    p_std, r_std = predicted.std(), realised.std()
    corr = float(np.corrcoef(predicted, realised)[0, 1]) if p_std > 0 and r_std > 0 else 0.0
    slope = float(np.cov(predicted, realised)[0, 1] / p_std ** 2) if p_std > 0 else 0.0
    return {"value_corr": corr, "value_slope": slope,
            "value_spread_ratio": float(p_std / r_std) if r_std > 0 else 0.0,
            "value_mae": float(np.abs(predicted - realised).mean())}
