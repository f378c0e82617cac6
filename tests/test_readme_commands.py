"""Every command of the README's "Command line" block, and its Python example, run as written with
tiny settings appended: train, train as two DDP processes, resume, train the critic, evaluate with
each planner, profile. A renamed script, key or planner breaks this test before it breaks a user."""
import os
import re
import shlex
import subprocess
import sys

import pytest
from test_end_to_end import write_halfcheetah_hdf5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_NAME = "halfcheetah-medium-s5-cpu"  # the run the README's commands name
TINY_TRAINING = ["data.seq_len=4", "data.n_bins=16", "model.d_model=16", "model.n_layers=1",
                 "model.n_heads=2", "train.batch_size=8", "train.max_tokens=1000"]
TINY_PLANNING = ["n_episodes=2", "max_episode_steps=3", "beam_width=2", "beam_steps=1", "beam_context=1"]


def readme_block(heading: str, language: str = "") -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split(f"\n## {heading}\n", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def documented_commands() -> list[list[str]]:
    lines = [line.split("#")[0].strip() for line in readme_block("Command line").splitlines()]
    return [shlex.split(line) for line in lines if line]


def tiny_data(tmp_path) -> list[str]:
    return [f"data.source={tmp_path / 'halfcheetah_tiny.hdf5'}", f"data.cache_dir={tmp_path / 'data'}",
            *TINY_TRAINING]


def tiny_recipe(recipe: str, tmp_path) -> str:
    """``recipe`` (a train.py config) on the tiny data, with the README run's name, as a file."""
    from omegaconf import OmegaConf
    tiny_settings = OmegaConf.from_dotlist([*tiny_data(tmp_path), "runs_dir=runs", f"name={RUN_NAME}"])
    merged = OmegaConf.merge(OmegaConf.load(os.path.join(ROOT, recipe)), tiny_settings)
    path = tmp_path / "recipe.yaml"
    OmegaConf.save(merged, path)
    return str(path)


def tiny(args: list[str], tmp_path, index: int) -> list[str]:
    """A documented command as a subprocess argv, with settings that make it run in seconds."""
    # run from a scratch folder: the configs are read from the repository, the runs land here
    args = [a.replace("runs/<name>", f"runs/{RUN_NAME}")
            .replace("--config=configs/", f"--config={ROOT}/configs/") for a in args]
    if args[0] == "torchrun":
        args = ["python", "-m", "torch.distributed.run", *args[1:]]
    script = next(a for a in args if a.endswith(".py"))
    extra = []
    if script == "train.py" and "--resume" in args:
        extra = ["train.max_tokens=2000"]
    elif script == "train.py":
        first = not (tmp_path / "runs" / RUN_NAME / "checkpoint").exists()  # makes the README's run
        name = RUN_NAME if first else f"documented-{index}"
        extra = [*tiny_data(tmp_path), "runs_dir=runs", f"name={name}"]
        if not first:  # another run of the same data, weighted by the README run's critic
            extra.append(f"train.advantage_critic=runs/{RUN_NAME}/critic/critic.pt")
    elif script == "train_critic.py":
        extra = ["hidden=16", "batch_size=8", "steps=20", "held_out_every=10"]
        recipe = next((a for a in args if a.startswith("recipe=")), None)
        if recipe:  # the recipe's run, on the tiny data
            args[args.index(recipe)] = f"recipe={tiny_recipe(recipe.split('=', 1)[1], tmp_path)}"
    elif script == "eval.py":
        extra = [*TINY_PLANNING, f"out={tmp_path / f'eval{index}'}"]
    elif script == "profile.py":
        extra = [*TINY_PLANNING, "profile_steps=1", f"out={tmp_path / 'profile'}"]
    argv = [sys.executable if args[0] == "python" else args[0], *args[1:], *extra]
    return [os.path.join(ROOT, a) if a.endswith(".py") and not os.path.isabs(a) else a for a in argv]


def test_every_documented_command_runs(tmp_path):
    write_halfcheetah_hdf5(tmp_path / "halfcheetah_tiny.hdf5", episodes=4, steps=30)
    commands = documented_commands()
    scripts = {next(a for a in c if a.endswith(".py")) for c in commands}
    assert scripts == {"train.py", "train_critic.py", "eval.py", "profile.py"}
    for index, command in enumerate(commands):
        argv = tiny(command, tmp_path, index)
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, \
            f"{shlex.join(command)}\n{result.stdout[-1500:]}{result.stderr[-3000:]}"
    assert (tmp_path / "runs" / RUN_NAME / "critic" / "critic.pt").is_file()
    assert all((tmp_path / f"eval{i}" / "report.json").is_file()
               for i, c in enumerate(commands) if "eval.py" in c)


@pytest.mark.parametrize("planner", ["policy", "beam"])
def test_the_documented_python_example_runs(tmp_path, planner, monkeypatch):
    import torch
    from test_planner import fitted_discretizer

    from trajectory.checkpoint import save_checkpoint
    from trajectory.config import TrainRunConfig
    from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel
    layout = TokenLayout(obs_dim=17, act_dim=6, vocab=12, seq_len=4)
    cfg = TrainRunConfig(name="tiny")
    cfg.model.core, cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = "s5", 16, 1, 2
    cfg.data.seq_len, cfg.data.n_bins = layout.seq_len, layout.vocab
    run = tmp_path / "runs" / RUN_NAME
    save_checkpoint(str(run / "checkpoint"), cfg, TrajectoryModel(cfg.model, layout),
                    fitted_discretizer(layout), None, {})
    code = readme_block("From Python", "python").replace("range(1000)", "range(3)")
    code = code.replace('planner="policy"', f'planner="{planner}", beam_width=2, beam_steps=1')
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {})
