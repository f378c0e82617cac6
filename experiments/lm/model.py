"""The language model: token embedding -> any sequence core -> final norm -> vocabulary head.

    tokens [B, T] -> Embedding [B, T, D] -> core (parallel or step form) -> LayerNorm -> head [B, T, V]

The core comes from :data:`experiments.lm.catalog.LM_CORE_CATALOG`: the package's cores plus the
SimpleRNN family defined in this experiment. Generation uses the core's step form only.

Token embeddings start at unit scale (PyTorch's N(0, 1)) and the head is a separate matrix by
default. At GPT-2's N(0, 0.02) the tokens are swamped by the GPT core's N(0, 1) position
embedding, and a character-level GPT stays at the unigram loss (~3.3 nats) for hundreds of steps.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from experiments.lm.catalog import LM_CORE_CATALOG
from experiments.lm.config import LMModelConfig
from trajectory.models.cores import CoreConfig, SequenceCore, build_core

LM_CORES: dict[str, type[SequenceCore]] = {name: entry.load() for name, entry in LM_CORE_CATALOG.items()}


def build_lm_core(name: str, cfg: CoreConfig, options: dict[str, Any] | None = None) -> SequenceCore:
    return build_core(name, cfg, options, catalog=LM_CORE_CATALOG)


class LanguageModel(nn.Module):
    def __init__(self, cfg: LMModelConfig, vocab_size: int, max_len: int):
        super().__init__()
        self.cfg, self.vocab_size, self.max_len = cfg, vocab_size, max_len
        core_cfg = CoreConfig(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                              max_len=max_len, dropout=cfg.dropout)
        self.embedding = nn.Embedding(vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.embedding_dropout)
        self.core = build_lm_core(cfg.core, core_cfg, cfg.core_options)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)
        if cfg.tie_embeddings:  # GPT-2's shared matrix at N(0, 0.02)
            nn.init.normal_(self.embedding.weight, std=0.02)
            self.head.weight = self.embedding.weight
        # else PyTorch's N(0, 1) rows: inputs at the unit scale of the GPT core's position embedding

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared (tied) tensors counted once

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, V]; position t predicts token t + 1."""
        h = self.core(self.drop(self.embedding(tokens)))  # [B, T, D]
        return self.head(self.norm(h))

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats per token; logits [B, T, V], targets [B, T]."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               reduction=reduction)

    # -- step form (generation)
    def init_state(self, batch_size: int, device, dtype=torch.float32):
        return self.core.init_state(batch_size, device, dtype)

    def step(self, tokens: torch.Tensor, state) -> tuple[torch.Tensor, Any]:
        """tokens [B, t] after the state's tokens -> logits [B, t, V], new state."""
        h, state = self.core.step(self.drop(self.embedding(tokens)), state)
        return self.head(self.norm(h)), state


@torch.no_grad()
def generate(model: LanguageModel, prompt: torch.Tensor, new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Prompt ids [B, P] -> the ``new_tokens`` ids that follow [B, new_tokens], by the step form.

    The prompt is fed as one chunk, then one token per step; temperature 0 is greedy decoding.
    """
    model.eval()
    state = model.init_state(prompt.shape[0], prompt.device)
    logits, state = model.step(prompt, state)
    out = []
    for _ in range(new_tokens):
        last = logits[:, -1].float()  # [B, V]
        if temperature <= 0:
            token = last.argmax(dim=-1, keepdim=True)
        else:
            last = last / temperature
            if top_k:
                kth = last.topk(min(top_k, last.shape[-1]), dim=-1).values[:, -1:]
                last = last.masked_fill(last < kth, -math.inf)
            token = torch.multinomial(last.softmax(dim=-1), 1, generator=generator)  # [B, 1]
        out.append(token)
        logits, state = model.step(token, state)
    return torch.cat(out, dim=1) if out else prompt.new_zeros(prompt.shape[0], 0)
