"""Train a trajectory model (GPT / Hyena / RetNet / S5 core) on an offline RL dataset.

    python train.py --config=configs/cpu/halfcheetah_medium_gpt.yaml
    torchrun --standalone --nproc_per_node=2 train.py --config=configs/cpu/halfcheetah_medium_s5.yaml
    python train.py --resume runs/<name>
"""
import sys

from trajectory.cli import run_resumable
from trajectory.config import TrainRunConfig

EXAMPLES = """
python train.py --config=configs/medium/halfcheetah_medium_hyena.yaml --device=cuda
python train.py --config=configs/cpu/halfcheetah_medium_gpt.yaml train.budget_minutes=20 model.n_layers=2
torchrun --standalone --nproc_per_node=2 train.py --config=configs/cpu/halfcheetah_medium_s5.yaml
python train.py --resume runs/<name> [train.budget_minutes=10 ...]
"""


def _train(cfg: TrainRunConfig, resume_dir: str | None):
    from trajectory.models.cores import check_core_config
    check_core_config(cfg.model.core, cfg.model.core_options)  # torch-free: reported at once
    from trajectory.checkpoint_folder import train_run_dir
    from trajectory.run_lock import run_lock
    run_dir = train_run_dir(cfg, resume_dir)
    with run_lock(run_dir, "train.py"):  # a second writer is refused at once
        from trajectory.data.sources import check_source
        check_source(cfg.data.source, download=cfg.data.download, cache_dir=cfg.data.cache_dir)
        from trajectory.training.advantage_weights import check_weighting_inputs
        check_weighting_inputs(cfg.train, run_dir)
        from trajectory.training.trainer import train
        return train(cfg, resume_dir=resume_dir)


def _resumable_config(path: str) -> str:
    import os

    from trajectory.checkpoint_folder import CHECKPOINT_DIR, checkpoint_dir, run_folder
    from trajectory.configutil import ConfigError
    from trajectory.run_lock import LOCK_FILE, refuse_if_busy
    refuse_if_busy(run_folder(path))  # at once, before torch loads to read the checkpoint
    config = os.path.join(path, "config.yaml")
    started = [name for name in ("config.yaml", LOCK_FILE) if os.path.isfile(os.path.join(path, name))]
    if started and checkpoint_dir(path) == path and not os.path.isfile(os.path.join(path, "model.pt")):
        again = (f"`python train.py --config={config} overwrite=true`" if "config.yaml" in started
                 else "its train.py command and overwrite=true")
        raise ConfigError(f"{path} was stopped before its first checkpoint ({CHECKPOINT_DIR}/ is missing): "
                          f"nothing to resume; start it again with {again}")
    from trajectory.checkpoint import resumable_config
    return resumable_config(path)


def main(argv=None) -> int:
    # torch is imported only once the command line has parsed: a mistyped key is reported at once
    # resuming continues the saved run: its config, with the CLI's overrides (e.g. budgets)
    try:
        return run_resumable(TrainRunConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, _train,
                             _resumable_config)
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one: no step is lost
        print("interrupted: the run's last checkpoint (if any) is as it was", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
