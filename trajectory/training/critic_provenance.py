"""What a critic was trained on: recorded with it by ``train_critic.py``, checked where a planner
uses it, and where a critic's training resumes.

A critic's Q is the discounted return of one dataset's behaviour, under one discount and one
penalty at terminals; a critic trained for another run ranks actions just as confidently, and
wrongly. The record holds the run's data settings (source, env, discount, terminal penalty), its
held-out split and a digest of the transitions the critic trained on; it is saved in ``critic.pt``
with the weights and in ``metrics.json`` beside them, which planners read before torch loads.
Critics saved before the record existed show what their ``metrics.json`` kept (source and
discount), else nothing: their dimensions are still checked. Torch-free.
"""
from __future__ import annotations

import hashlib
import os

from trajectory.configutil import ConfigError

# settings that change what Q estimates: a critic is refused for a run that differs in any of them
COMPARED = ("source", "discount", "terminal_penalty")


def retrain_fix(run_dir: str) -> str:
    return f"retrain the critic with `python train_critic.py run={run_dir or '<run dir>'} overwrite=true`"


def data_digest(*arrays) -> str:
    """A short hash of numpy arrays' shapes and bytes: the data a critic trained on."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(memoryview(array.reshape(-1)).cast("B"))
    return digest.hexdigest()[:16]


def provenance(data_cfg, env_id: str | None, held_out_episodes: list[int], digest: str) -> dict:
    """The record of a critic trained on the data ``data_cfg`` (a run's DataConfig) describes."""
    return {"source": data_cfg.source, "env_id": env_id, "discount": float(data_cfg.discount),
            "terminal_penalty": float(data_cfg.terminal_penalty),
            "holdout_fraction": float(data_cfg.holdout_fraction),
            "held_out_episodes": [int(e) for e in held_out_episodes], "data_digest": digest}


def from_metrics(metrics: dict) -> dict:
    """The record in a critic's metrics.json; older ones kept only the source and the discount."""
    if isinstance(metrics.get("provenance"), dict):
        return metrics["provenance"]
    return {key: metrics[key] for key in ("source", "discount") if key in metrics}


def read_beside(critic_file: str, run_dir: str) -> dict:
    """The record in the metrics.json beside ``critic_file`` ({} where there is none)."""
    from trajectory.loaders import load_json
    metrics = os.path.join(os.path.dirname(critic_file), "metrics.json")
    if not os.path.isfile(metrics):
        return {}
    return from_metrics(load_json(metrics, retrain_fix(run_dir)))


def run_data_settings(run_path: str) -> dict:
    """The data settings of the run at ``run_path`` (its folder or checkpoint folder), from its
    config.yaml; {} where it has none (loading the run reports that)."""
    from trajectory.checkpoint_folder import checkpoint_dir
    from trajectory.loaders import load_yaml
    config = os.path.join(checkpoint_dir(run_path), "config.yaml")
    if not run_path or not os.path.isfile(config):
        return {}
    data = load_yaml(config, "restore the run's checkpoint folder or train it again").get("data")
    return data if isinstance(data, dict) else {}


def check_critic_fits(record: dict, critic_file: str, run_settings: dict, run_dir: str) -> None:
    """A ConfigError naming both when the critic was trained on other data, discount or terminal
    penalty than the run it would plan for; settings either side lacks are not compared."""
    differ = [key for key in COMPARED if key in record and key in run_settings
              and record[key] != run_settings[key]]
    if differ:
        trained = ", ".join(f"{key}={record[key]}" for key in differ)
        run = ", ".join(f"{key}={run_settings[key]}" for key in differ)
        raise ConfigError(f"the critic {critic_file} was trained for {trained} but the run {run_dir} has "
                          f"{run}: {retrain_fix(run_dir)} (or pass this run's critic with critic=...)")


def check_resumable(saved: dict, current: dict, out: str, run_dir: str) -> None:
    """Resuming a critic's training on other data than it started on would mix two critics."""
    differ = [key for key in (*COMPARED, "data_digest", "held_out_episodes")
              if key in saved and saved[key] != current.get(key)]
    if differ:
        raise ConfigError(f"{out} was started on other data ({', '.join(differ)} changed since): it "
                          f"cannot continue; {retrain_fix(run_dir)}")
