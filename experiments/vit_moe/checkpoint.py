"""Checkpoint folders that rebuild their model: resolved config, weights, image spec, metrics.

    <run>/checkpoint/
        config.yaml     the resolved RunConfig
        model.pt        {"state_dict": tensors, "spec": ImageSpec fields}  (loads with weights_only)
        metrics.json    per-epoch history and parameter counts
        trainer.pt      optimizer, step and epoch: what ``--resume`` needs (saved at each epoch's end)

The folder is written as a whole, durably (trajectory.checkpoint.write_checkpoint_folder): a crash
leaves the previous checkpoint or the new one, never a mix.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch
from omegaconf import OmegaConf

from experiments.vit_moe.config import RunConfig
from experiments.vit_moe.data import ImageSpec
from experiments.vit_moe.model import ViT
from trajectory.checkpoint import CheckpointError, resumable_folder
from trajectory.checkpoint_folder import checkpoint_dir, write_checkpoint_folder
from trajectory.configutil import ConfigError, from_dict, to_dict
from trajectory.io import save_json, save_text, save_torch


def save_checkpoint(folder: str, cfg: RunConfig, model: ViT, metrics: dict,
                    trainer_state: dict | None = None) -> None:
    def write(tmp: str) -> None:
        if trainer_state is not None:
            save_torch(trainer_state, os.path.join(tmp, "trainer.pt"))
        save_text(OmegaConf.to_yaml(to_dict(cfg)), os.path.join(tmp, "config.yaml"))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_torch({"state_dict": state, "spec": dataclasses.asdict(model.spec)},
                   os.path.join(tmp, "model.pt"))
        save_json(metrics, os.path.join(tmp, "metrics.json"))
    write_checkpoint_folder(folder, write)


def load_checkpoint(path: str, device: str = "cpu") -> tuple[RunConfig, ViT, dict]:
    """(config, model in eval mode, metrics) from a run or checkpoint folder."""
    folder = checkpoint_dir(path)
    files = {name: os.path.join(folder, name) for name in ("config.yaml", "model.pt", "metrics.json")}
    for name, file in files.items():
        if not os.path.isfile(file):
            raise CheckpointError(f"no checkpoint at '{path}': {name} is missing (train one with "
                                  f"python -m experiments.vit_moe.train)")
    try:
        cfg = from_dict(RunConfig, OmegaConf.to_container(OmegaConf.load(files["config.yaml"])),
                        origin=files["config.yaml"])
        saved = torch.load(files["model.pt"], map_location=device, weights_only=True)
        with open(files["metrics.json"]) as f:
            metrics = json.load(f)
        model = ViT(cfg.model, ImageSpec(**saved["spec"]))
        model.load_state_dict(saved["state_dict"])
    except (ConfigError, RuntimeError, KeyError, TypeError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint '{folder}' is corrupt or does not match its config: "
                              f"{str(err).splitlines()[0]}") from None
    return cfg, model.to(device).eval(), metrics


def resumable_config(path: str) -> str:
    """The saved config of a run ``--resume`` can continue."""
    folder = resumable_folder(path, checkpoint_dir(path), ("config.yaml", "model.pt", "metrics.json"),
                              "the folder of a run trained by python -m experiments.vit_moe.train")
    return os.path.join(folder, "config.yaml")

