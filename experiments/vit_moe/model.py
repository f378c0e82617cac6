"""A compact Vision Transformer (Dosovitskiy et al., 2021) whose feed-forward layers are pluggable.

    images [B, C, H, W] -> patches [B, N, D] -> [CLS] + patches + positions [B, 1 + N, D]
    -> n_layers x Block -> LayerNorm -> head on [CLS] -> logits [B, n_classes]
    Block: x + Attn(LN(x)), then x + FFN(LN(x))      (pre-norm, bidirectional attention)

``FFN`` is :class:`~experiments.vit_moe.moe.Dense`, ``Top1MoE`` or ``RandomRouting`` by
``model.variant``. The package's sequence cores are causal, so the encoder block lives here.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from experiments.vit_moe.config import ModelConfig
from experiments.vit_moe.data import ImageSpec
from experiments.vit_moe.moe import RandomRouting, make_feedforward
from trajectory.configutil import ConfigError


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches, each linearly projected to D (a strided convolution)."""

    def __init__(self, channels: int, patch_size: int, d_model: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        return self.proj(images).flatten(2).transpose(1, 2)  # [B, N, D], N = (H / P) * (W / P)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask), fused QKV projection, SDPA."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        B, T, D = x.shape
        q, k, v = (z.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)
                   for z in self.qkv(x).split(D, dim=2))  # [B, H, T, hd] each
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = make_feedforward(cfg.variant, cfg.d_model, cfg.hidden, cfg.n_experts, cfg.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B, T, D]
        x = x + self.attn(self.ln1(x))
        y, aux = self.ffn(self.ln2(x))
        return x + y, aux


class ViT(nn.Module):
    """Vision Transformer with a [CLS] token, learned positions and a linear head."""

    def __init__(self, cfg: ModelConfig, spec: ImageSpec):
        super().__init__()
        P = cfg.patch_size
        if spec.height % P or spec.width % P:
            raise ConfigError(f"model.patch_size={P} must divide the image size "
                              f"{spec.height}x{spec.width}")
        self.cfg, self.spec = cfg, spec
        n_patches = (spec.height // P) * (spec.width // P)
        self.patch = PatchEmbed(spec.channels, P, cfg.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos = nn.Parameter(torch.zeros(1, 1 + n_patches, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, spec.n_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images float [B, C, H, W] -> logits [B, n_classes] and the summed auxiliary loss."""
        x = self.patch(images)  # [B, N, D]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # [B, 1 + N, D]
        x = self.drop(x)
        aux = x.new_zeros(())
        for block in self.blocks:
            x, block_aux = block(x)
            aux = aux + block_aux
        return self.head(self.ln(x[:, 0])), aux

    # -- sizes and export
    def num_parameters(self) -> int:
        """Every stored parameter (all experts)."""
        return sum(p.numel() for p in self.parameters())

    def inference_parameters(self) -> int:
        """Parameters one image uses at inference: one expert (+ router) per layer for ``moe``,
        the averaged MLP for ``random``."""
        ffn_stored = sum(p.numel() for b in self.blocks for p in b.ffn.parameters())
        ffn_used = sum(b.ffn.inference_parameters() for b in self.blocks)
        return self.num_parameters() - ffn_stored + ffn_used

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights of a dense ``vit`` with the same shape: random-routing experts averaged."""
        if self.cfg.variant == "moe":
            raise ValueError("a learned top-1 mixture has no dense equivalent; only 'vit' and 'random' "
                             "models can be exported as a dense ViT")
        state = {k: v.detach().clone() for k, v in self.state_dict().items() if ".ffn.experts." not in k}
        for i, block in enumerate(self.blocks):
            if isinstance(block.ffn, RandomRouting):
                state.update({f"blocks.{i}.ffn.mlp.{k}": v.detach().clone()
                              for k, v in block.ffn.averaged_state().items()})
        return state

    def to_dense(self) -> ViT:
        """A ``vit`` model computing what this one computes in eval mode (for ``random``: averaged)."""
        dense = ViT(dataclasses.replace(self.cfg, variant="vit"), self.spec)
        dense.load_state_dict(self.dense_state_dict())
        return dense.to(self.cls.device).eval()
