"""Checkpoint directories: written atomically, rebuilt from their own files, nothing pickled.

    <run>/checkpoint/
        config.yaml       the resolved TrainRunConfig
        model.pt          {"state_dict", "layout"}  (tensors and plain containers; an
                          "ema_state_dict" that older runs saved beside them is not read)
        discretizer.npz   bin edges and settings
        trainer.pt        optimizer, step, tokens, RNG states: what an exact resume needs
        metrics.json      last logged metrics

The directory is written under a temporary name, every file and the folder are fsynced and marked
COMPLETE, then it is renamed into place (the previous one moved aside first). A crash leaves either
checkpoint/ or, between the two renames, the complete folders beside it, which loading picks up
(the newest); a failed save removes its temporary folder; the next save clears what a crash left.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from trajectory.checkpoint_folder import CHECKPOINT_DIR, REQUIRED, checkpoint_dir, write_checkpoint_folder
from trajectory.config import TrainRunConfig
from trajectory.configutil import ConfigError, from_dict, to_dict
from trajectory.data.discretizer import Discretizer
from trajectory.io import missing_files
from trajectory.loaders import UnreadableFileError, load_json, load_torch_state, load_yaml, unreadable
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel


class CheckpointError(ConfigError):
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
        """The model with the last optimizer step's weights, in eval mode on ``device``."""
        model = TrajectoryModel(self.config.model, self.layout)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as err:
            raise CheckpointError(
                f"weights in {self.path}/model.pt do not fit the model its config.yaml describes "
                f"(was the config edited?): {str(err).splitlines()[0]}") from None
        return model.to(device).eval()


def save_checkpoint(path: str, config: TrainRunConfig, model: TrajectoryModel,
                    discretizer: Discretizer, trainer_state: dict | None, metrics: dict) -> None:
    def write(folder: str) -> None:
        def torch_file(name: str, obj: Any) -> None:
            # through a Python file: torch writing to a name reports a full disk as a bare failed write
            with open(os.path.join(folder, name), "wb") as f:
                torch.save(obj, f)

        with open(os.path.join(folder, "config.yaml"), "w") as f:
            f.write(OmegaConf.to_yaml(to_dict(config)))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch_file("model.pt", {"state_dict": state, "layout": asdict(model.layout)})
        discretizer.save(os.path.join(folder, "discretizer.npz"))
        if trainer_state is not None:
            torch_file("trainer.pt", trainer_state)
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
    write_checkpoint_folder(path, write)


# what to do about each damaged file of a checkpoint (the run folder is the path's parent)
RETRAIN = "restore the checkpoint folder from a copy, or train the run again"
FIXES = {
    "config.yaml": f"{RETRAIN} (the run folder's own config.yaml holds its settings too)",
    "model.pt": RETRAIN,
    "discretizer.npz": RETRAIN,
    "trainer.pt": "the run cannot be resumed (its model.pt still evaluates): train a new run, or "
                  "restore the checkpoint folder from a copy",
    "metrics.json": "it holds only the last logged metrics: delete it (the checkpoint loads without "
                    "it and the next save writes it again)",
}
TRAINER_STATE_KEYS = ("optimizer", "progress", "rng")


def load_torch_file(path: str, keys: tuple[str, ...] = ()) -> Any:
    """A checkpoint's torch file (tensors and plain containers) holding ``keys``; one line naming the
    file and the fix when it is damaged."""
    return load_torch_state(path, FIXES.get(os.path.basename(path), RETRAIN), keys)


def resumable_folder(path: str, folder: str, required: tuple[str, ...], how: str) -> str:
    """``folder`` (the checkpoint folder of run ``path``) when it holds ``required`` and trainer.pt;
    otherwise a CheckpointError that says ``how`` to get a run that can be resumed."""
    missing = missing_files(folder, (*required, "trainer.pt"))
    if missing:
        raise CheckpointError(f"'{path}' cannot be resumed (missing {', '.join(missing)} in {folder}); "
                              f"pass {how}")
    return folder


def trainer_state_file(config_path: str) -> str:
    """trainer.pt beside the config.yaml that :func:`resumable_folder`'s callers return."""
    return os.path.join(os.path.dirname(config_path), "trainer.pt")


def restore_weights(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Load a run's weights and optimizer state; a CheckpointError when they do not fit the model."""
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"the checkpoint does not fit this model ({str(err).splitlines()[0]}); "
                              f"resume without changing model.* or data.*") from None


def resumable_config(path: str) -> str:
    """The saved config of a run ``train.py --resume`` can continue."""
    folder = resumable_folder(path, checkpoint_dir(path), REQUIRED, "the run directory of a train.py run")
    config = os.path.join(folder, "config.yaml")
    load_yaml(config, FIXES["config.yaml"])  # one line for a damaged file, before the CLI parses it
    return config


def load_checkpoint(path: str, with_trainer_state: bool = False) -> Checkpoint:
    directory = checkpoint_dir(path)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint at '{path}': expected a run directory (runs/<name>) "
                              f"or its '{CHECKPOINT_DIR}/' folder; train one with train.py")
    missing = missing_files(directory, REQUIRED)
    if missing:
        raise CheckpointError(f"checkpoint '{directory}' is incomplete: missing {', '.join(missing)}")
    try:
        return _read_checkpoint(directory, with_trainer_state)
    except UnreadableFileError as err:  # one error type for every problem of a checkpoint
        raise CheckpointError(str(err)) from None


def _read_checkpoint(directory: str, with_trainer_state: bool) -> Checkpoint:
    def file(name: str) -> str:
        return os.path.join(directory, name)

    raw = load_yaml(file("config.yaml"), FIXES["config.yaml"])
    try:
        config = from_dict(TrainRunConfig, raw, origin=f"{directory}/config.yaml")
    except ConfigError as err:
        raise CheckpointError(f"checkpoint config is incompatible with this version: {err}") from None
    payload = load_torch_file(file("model.pt"), keys=("state_dict", "layout"))
    discretizer = Discretizer.load(file("discretizer.npz"), FIXES["discretizer.npz"])
    trainer_state = None
    if with_trainer_state:
        if not os.path.isfile(file("trainer.pt")):
            raise CheckpointError(f"{directory} has no trainer.pt: it cannot be resumed")
        trainer_state = load_torch_file(file("trainer.pt"), keys=TRAINER_STATE_KEYS)
    metrics = load_json(file("metrics.json"), FIXES["metrics.json"]) if os.path.isfile(
        file("metrics.json")) else {}
    try:
        layout = TokenLayout(**payload["layout"])
    except TypeError as err:
        raise unreadable(file("model.pt"), f"its layout is not a token layout ({err})", RETRAIN) from None
    return Checkpoint(directory, config, layout, payload["state_dict"], discretizer, trainer_state,
                      metrics)
