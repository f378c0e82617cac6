"""Language-model checkpoints: a folder that rebuilds its model, nothing pickled.

    <run>/checkpoint/
        config.yaml      the resolved LMRunConfig
        model.pt         {"state_dict", "vocab_size", "max_len"}  (tensors and ints only)
        tokenizer.json   the character alphabet or the BPE merges
        metrics.json     last training / validation metrics and the evaluation history
        trainer.pt       optimizer, step, schedule length, history, RNG: what ``--resume`` needs

The folder is written as a whole, durably (trajectory.checkpoint.write_checkpoint_folder): a crash
leaves the previous checkpoint or the new one, never a mix.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from experiments.lm.config import LMRunConfig
from experiments.lm.model import LanguageModel
from experiments.lm.tokenizers import Tokenizer, load_tokenizer, save_tokenizer
from trajectory.checkpoint import resumable_folder
from trajectory.checkpoint_folder import CHECKPOINT_DIR, checkpoint_dir, write_checkpoint_folder
from trajectory.configutil import ConfigError, from_dict, to_dict
from trajectory.io import missing_files, save_json, save_text, save_torch


@dataclass
class LMCheckpoint:
    config: LMRunConfig
    model: LanguageModel
    tokenizer: Tokenizer
    metrics: dict


def save_lm_checkpoint(run_dir: str, cfg: LMRunConfig, model: LanguageModel, tokenizer: Tokenizer,
                       metrics: dict, trainer_state: dict | None = None) -> str:
    path = os.path.join(run_dir, CHECKPOINT_DIR)

    def write(folder: str) -> None:
        if trainer_state is not None:
            save_torch(trainer_state, os.path.join(folder, "trainer.pt"))
        save_text(OmegaConf.to_yaml(to_dict(cfg)), os.path.join(folder, "config.yaml"))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_torch({"state_dict": state, "vocab_size": model.vocab_size, "max_len": model.max_len},
                   os.path.join(folder, "model.pt"))
        save_tokenizer(tokenizer, os.path.join(folder, "tokenizer.json"))
        save_json(metrics, os.path.join(folder, "metrics.json"))
    write_checkpoint_folder(path, write)
    return path


def resumable_config(path: str) -> str:
    """The saved config of a run that ``--resume`` can continue."""
    folder = resumable_folder(path, checkpoint_dir(path), ("config.yaml", "model.pt", "tokenizer.json"),
                              "the run directory of a training run (runs/lm/<name>)")
    return os.path.join(folder, "config.yaml")


def load_lm_checkpoint(path: str, device: str = "cpu") -> LMCheckpoint:
    """Accepts a run directory or its ``checkpoint/`` folder; returns the model in eval mode."""
    folder = checkpoint_dir(path)
    missing = missing_files(folder, ("config.yaml", "model.pt", "tokenizer.json"))
    if missing:
        raise ConfigError(f"no language-model checkpoint at '{path}' (missing {', '.join(missing)}); "
                          f"pass checkpoint=runs/lm/<name> of a finished training run")
    raw = OmegaConf.to_container(OmegaConf.load(os.path.join(folder, "config.yaml")))
    cfg = from_dict(LMRunConfig, raw, origin=f"{folder}/config.yaml")
    payload = torch.load(os.path.join(folder, "model.pt"), map_location="cpu", weights_only=True)
    model = LanguageModel(cfg.model, payload["vocab_size"], payload["max_len"])
    model.load_state_dict(payload["state_dict"])
    metrics_path = os.path.join(folder, "metrics.json")
    metrics = json.load(open(metrics_path)) if os.path.isfile(metrics_path) else {}
    return LMCheckpoint(cfg, model.to(device).eval(), load_tokenizer(os.path.join(folder, "tokenizer.json")),
                        metrics)
