"""Checkpoint directories: written atomically, rebuilt from their own files, nothing pickled.

    <run>/checkpoint/
        config.yaml       the resolved TrainRunConfig
        model.pt          {"state_dict", "layout"}  (tensors and plain containers only)
        discretizer.npz   bin edges and settings
        trainer.pt        optimizer, step, tokens, RNG states: what an exact resume needs
        metrics.json      last logged metrics

The directory is written under a temporary name and renamed into place, so a crash leaves either
the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from trajectory.config import TrainRunConfig
from trajectory.configutil import ConfigError, from_dict, to_dict
from trajectory.data.discretizer import Discretizer
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel

CHECKPOINT_DIR = "checkpoint"
REQUIRED = ("config.yaml", "model.pt", "discretizer.npz")


class CheckpointError(ValueError):
    """A missing, corrupt or incompatible checkpoint; the message says which file and what to do."""


@dataclass
class Checkpoint:
    path: str
    config: TrainRunConfig
    layout: TokenLayout
    model_state: dict[str, torch.Tensor]
    discretizer: Discretizer
    trainer_state: dict[str, Any] | None
    metrics: dict[str, Any]

    def build_model(self, device: torch.device | str = "cpu") -> TrajectoryModel:
        model = TrajectoryModel(self.config.model, self.layout)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as err:
            raise CheckpointError(
                f"weights in {self.path}/model.pt do not fit the model its config.yaml describes "
                f"(was the config edited?): {str(err).splitlines()[0]}") from None
        return model.to(device).eval()


def checkpoint_dir(path: str) -> str:
    """Accept a run directory (runs/<name>) or the checkpoint directory itself."""
    nested = os.path.join(path, CHECKPOINT_DIR)
    return nested if os.path.isdir(nested) else path


def save_checkpoint(path: str, config: TrainRunConfig, model: TrajectoryModel,
                    discretizer: Discretizer, trainer_state: dict | None, metrics: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(to_dict(config)))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "layout": asdict(model.layout)}, os.path.join(tmp, "model.pt"))
    discretizer.save(os.path.join(tmp, "discretizer.npz"))
    if trainer_state is not None:
        torch.save(trainer_state, os.path.join(tmp, "trainer.pt"))
    with open(os.path.join(tmp, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    if os.path.exists(path):  # rename(2) cannot replace a non-empty directory: move the old aside
        old = f"{path}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _load_torch(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong format, ...
        raise CheckpointError(f"cannot read {path}: the file is corrupt or not a checkpoint "
                              f"({type(err).__name__}). Re-save it or train again.") from None


def load_checkpoint(path: str, with_trainer_state: bool = False) -> Checkpoint:
    directory = checkpoint_dir(path)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint at '{path}': expected a run directory (runs/<name>) "
                              f"or its '{CHECKPOINT_DIR}/' folder; train one with train.py")
    missing = [name for name in REQUIRED if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise CheckpointError(f"checkpoint '{directory}' is incomplete: missing {', '.join(missing)}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(os.path.join(directory, "config.yaml")))
        config = from_dict(TrainRunConfig, raw, origin=f"{directory}/config.yaml")
    except ConfigError as err:
        raise CheckpointError(f"checkpoint config is incompatible with this version: {err}") from None
    except Exception as err:
        raise CheckpointError(f"cannot read {directory}/config.yaml: {err}") from None
    payload = _load_torch(os.path.join(directory, "model.pt"))
    if not isinstance(payload, dict) or "state_dict" not in payload or "layout" not in payload:
        raise CheckpointError(f"{directory}/model.pt is not a trajectory-model checkpoint")
    try:
        discretizer = Discretizer.load(os.path.join(directory, "discretizer.npz"))
    except Exception as err:
        raise CheckpointError(f"cannot read {directory}/discretizer.npz: {err}") from None
    trainer_state = None
    trainer_path = os.path.join(directory, "trainer.pt")
    if with_trainer_state:
        if not os.path.isfile(trainer_path):
            raise CheckpointError(f"{directory} has no trainer.pt: it cannot be resumed")
        trainer_state = _load_torch(trainer_path)
    metrics_path = os.path.join(directory, "metrics.json")
    metrics = json.load(open(metrics_path)) if os.path.isfile(metrics_path) else {}
    return Checkpoint(directory, config, TokenLayout(**payload["layout"]), payload["state_dict"],
                      discretizer, trainer_state, metrics)
