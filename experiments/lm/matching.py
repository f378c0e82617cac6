"""RetNet and Transformer language models of matched size for one grid point.

The Transformer is the GPT core with the point's embedding dim ``d``, heads, layers and an MLP of
width ``ffn_dim``. The GPT core sizes its MLP as an integer multiple of ``d`` (``mlp_ratio``), so a
width that is not a multiple is rounded to the nearest one (at least ``d``); the CSV records the
width actually built. The RetNet has the same ``d``, heads and layers, and its SwiGLU width is
solved so that the two models' parameter counts (embeddings and head included) agree: one SwiGLU
unit costs ``3 d`` parameters per layer, so the gap after rounding is at most ``1.5 d * layers``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from experiments.lm.config import LMModelConfig
from experiments.lm.model import LanguageModel
from trajectory.configutil import ConfigError


@dataclass
class MatchedPair:
    transformer: LMModelConfig
    retnet: LMModelConfig
    transformer_ffn: int
    retnet_ffn: int
    transformer_params: int
    retnet_params: int

    @property
    def gap(self) -> float:
        """Relative parameter-count difference, |P_retnet - P_gpt| / P_gpt."""
        return abs(self.retnet_params - self.transformer_params) / self.transformer_params


def count_parameters(cfg: LMModelConfig, vocab_size: int, max_len: int) -> int:
    with torch.device("meta"):  # shapes only, no memory
        return LanguageModel(cfg, vocab_size, max_len).num_parameters()


def matched_pair(base: LMModelConfig, ffn_dim: int, vocab_size: int, max_len: int,
                 value_factor: int = 1) -> MatchedPair:
    """``base`` gives d_model, n_heads, n_layers, dropout; returns GPT and RetNet configs."""
    d, layers = base.d_model, base.n_layers
    ratio = max(1, round(ffn_dim / d))
    gpt = copy.deepcopy(base)
    gpt.core, gpt.core_options = "gpt", {"mlp_ratio": ratio}
    p_gpt = count_parameters(gpt, vocab_size, max_len)
    ret = copy.deepcopy(base)
    ret.core, ret.core_options = "retnet", {"value_factor": value_factor, "ffn_ratio": 1.0}
    p_ret_d = count_parameters(ret, vocab_size, max_len)  # SwiGLU width d
    hidden = d + round((p_gpt - p_ret_d) / (3 * d * layers))
    if hidden < 1:
        raise ConfigError(f"cannot match a RetNet to the Transformer at d={d}, ffn={ffn_dim}: its "
                          f"retention alone is larger; lower retnet_value_factor or raise ffn_dims")
    ret.core_options = {"value_factor": value_factor, "ffn_ratio": (hidden + 0.5) / d}  # int() -> hidden
    p_ret = count_parameters(ret, vocab_size, max_len)
    return MatchedPair(gpt, ret, ratio * d, hidden, p_gpt, p_ret)
