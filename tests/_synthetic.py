"""Small synthetic token datasets and runs for training tests (shared by the DDP worker script)."""
import numpy as np
import torch

from trajectory.config import TrainRunConfig
from trajectory.data.discretizer import Discretizer
from trajectory.models.trajectory_model import TokenLayout

LAYOUT = TokenLayout(obs_dim=3, act_dim=2, vocab=16, seq_len=3)


class TokenWindows(torch.utils.data.Dataset):
    """Random but fixed windows with a learnable pattern; full loss masks (no padding)."""

    def __init__(self, n: int = 96, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        base = torch.randint(0, LAYOUT.vocab, (n, 1), generator=g)
        steps = torch.randint(0, 3, (n, LAYOUT.max_tokens), generator=g)
        self.tokens = (base + steps.cumsum(1)) % LAYOUT.vocab
        self.mask = torch.ones(n, LAYOUT.max_tokens)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):  # the WindowDataset format: inputs, next-token targets, loss mask
        return {"x": self.tokens[i, :-1], "y": self.tokens[i, 1:], "mask": self.mask[i, 1:]}


def discretizer() -> Discretizer:
    rows = np.random.default_rng(0).normal(size=(200, LAYOUT.transition_dim))
    return Discretizer(n_bins=LAYOUT.vocab, strategy="uniform").fit(rows)


def tiny_config(tmp_dir: str, batch_size: int = 16, dropout: float = 0.0) -> TrainRunConfig:
    cfg = TrainRunConfig(name="tiny", runs_dir=str(tmp_dir), device="cpu", seed=3)
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = 16, 2, 2
    cfg.model.dropout = cfg.model.embedding_dropout = dropout
    # No biases: attention's key bias has an exactly zero gradient, and Adam turns the rounding noise
    # of a zero gradient into full-size steps, which would make DDP-vs-single comparisons meaningless.
    cfg.model.core_options = {"bias": False}
    cfg.data.seq_len, cfg.data.n_bins = LAYOUT.seq_len, LAYOUT.vocab
    cfg.train.batch_size, cfg.train.lr, cfg.train.epochs = batch_size, 3e-3, 100
    cfg.train.log_every, cfg.train.save_every = 2, 0
    cfg.train.warmup_tokens = 1  # full learning rate from the first step
    return cfg
