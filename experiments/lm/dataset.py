"""Token streams of the three splits, training windows, and evaluation in bits per character.

Training windows of ``seq_len + 1`` tokens start at random offsets of the training stream. The
offsets of step ``s`` depend only on ``(seed, s)``, and rank ``r`` of ``W`` takes rows
``[r * B / W, (r + 1) * B / W)`` of the global batch: W processes see exactly the batch one
process would.

Bits per character. Evaluation runs non-overlapping windows from the start of a split; the
targets are tokens ``1 .. n`` of the stream. With ``L`` the summed cross-entropy (nats) over those
targets and ``C`` the number of characters they decode to,

    loss = L / n  (nats per token),   perplexity = exp(loss),   bpc = L / (C ln 2).

For the character tokenizer ``C = n`` and bpc = loss / ln 2; for BPE, ``C`` is the length of the
decoded target text, so models with different tokenizers compare on the same scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from experiments.lm.config import LMDataConfig
from experiments.lm.data import Corpus, load_corpus
from experiments.lm.tokenizers import Tokenizer, build_tokenizer
from trajectory.configutil import ConfigError
from trajectory.training import distributed

SPLITS = ("train", "val", "test")


@dataclass
class TokenData:
    corpus: str
    tokenizer: Tokenizer
    splits: dict[str, torch.Tensor]  # split -> token ids [N] (int64)
    plays: dict | None = None


def tokenize_corpus(corpus: Corpus, cfg: LMDataConfig) -> TokenData:
    all_text = corpus.train + corpus.val + corpus.test
    tokenizer = build_tokenizer(cfg.tokenizer, corpus.train, all_text, cfg.bpe_vocab_size)
    splits = {s: torch.tensor(tokenizer.encode(getattr(corpus, s)), dtype=torch.long) for s in SPLITS}
    for name, ids in splits.items():
        if len(ids) < cfg.seq_len + 2:
            raise ConfigError(f"the {name} split has {len(ids)} tokens, fewer than one window of "
                              f"data.seq_len={cfg.seq_len}; lower data.seq_len or give more text")
    return TokenData(corpus.name, tokenizer, splits, corpus.plays)


def prepare_data(cfg: LMDataConfig) -> TokenData:
    return tokenize_corpus(load_corpus(cfg), cfg)


def window_offsets(step: int, seed: int, n_tokens: int, seq_len: int, batch_size: int) -> torch.Tensor:
    """Start offsets [batch_size] of step ``step``'s global batch (the same on every rank)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n_tokens - seq_len - 1, (batch_size,), generator=gen)


def gather_windows(tokens: torch.Tensor, offsets: torch.Tensor, seq_len: int,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [N], offsets [b] -> inputs x [b, seq_len] and next-token targets y [b, seq_len]."""
    chunk = tokens[offsets[:, None] + torch.arange(seq_len + 1)]  # [b, seq_len + 1]
    return chunk[:, :-1], chunk[:, 1:]


def train_batch(data: TokenData, step: int, seed: int, seq_len: int, batch_size: int,
                ctx: distributed.DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of step ``step``'s batch, on its device."""
    offsets = window_offsets(step, seed, len(data.splits["train"]), seq_len, batch_size)
    local = batch_size // ctx.world_size
    offsets = offsets[ctx.rank * local:(ctx.rank + 1) * local]
    x, y = gather_windows(data.splits["train"], offsets, seq_len)
    return x.to(ctx.device), y.to(ctx.device)


def eval_windows(n_tokens: int, seq_len: int, max_tokens: int) -> int:
    """How many non-overlapping evaluation windows a split of ``n_tokens`` gives."""
    n = (n_tokens - 1) // seq_len
    return min(n, max(1, max_tokens // seq_len)) if max_tokens else n


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, tokenizer: Tokenizer, seq_len: int, max_tokens: int,
             batch_size: int, ctx: distributed.DistContext) -> dict[str, float]:
    """Loss (nats/token), perplexity and bits per character on the first windows of a split;
    ranks share the windows and sum their totals."""
    was_training = model.training
    model.eval()
    n_windows = eval_windows(len(tokens), seq_len, max_tokens)
    starts = torch.arange(n_windows)[ctx.rank::ctx.world_size] * seq_len
    total = torch.zeros(2, dtype=torch.float64)  # summed nats, targets
    for i in range(0, len(starts), batch_size):
        x, y = gather_windows(tokens, starts[i:i + batch_size], seq_len)
        logits = model(x.to(ctx.device))
        total[0] += model.loss(logits, y.to(ctx.device), reduction="sum").double().cpu()
        total[1] += y.numel()
    total = distributed.all_mean(ctx, total.to(ctx.device)).cpu() * ctx.world_size
    n_chars = len(tokenizer.decode(tokens[1:n_windows * seq_len + 1].tolist()))
    nats, count = total.tolist()
    model.train(was_training)
    loss = nats / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "bpc": nats / (max(n_chars, 1) * math.log(2)), "tokens": int(count)}
