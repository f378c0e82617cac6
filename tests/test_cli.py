"""Each CLI runs as a subprocess, the way users run it (from the repository root)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kwargs)


@pytest.mark.parametrize("script", ["train.py", "eval.py", "profile.py"])
def test_help(script):
    result = run([script, "--help"])
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "--config=" in result.stdout


@pytest.mark.parametrize("script", ["train.py", "eval.py", "profile.py"])
def test_bad_key_exits_with_one_clear_error(script):
    result = run([script, "no_such_key=1"])
    assert result.returncode == 2
    assert "unknown config key 'no_such_key'" in result.stderr
    assert "Traceback" not in result.stderr


def test_profile_script_does_not_shadow_stdlib_profile():
    # Running a script puts its folder first on sys.path (simulated here with ''), where profile.py
    # would shadow the standard library's profile module that cProfile and torch._dynamo import.
    shadowed = "import sys; sys.path.insert(0, ''); import cProfile"
    assert run(["-c", shadowed]).returncode != 0  # the hazard is real in this layout
    fixed = ("import sys, runpy; sys.path.insert(0, ''); runpy.run_path('profile.py', run_name='cli'); "
             "import cProfile, torch._dynamo; cProfile.run('1 + 1')")
    result = run(["-c", fixed])
    assert result.returncode == 0, result.stderr


def test_test_process_imports_stdlib_profile():
    import cProfile
    import profile
    assert hasattr(profile, "run") and hasattr(cProfile, "run")


BAD_INPUTS = [
    (["train.py", "model.core=gtp"], "'gtp'"),
    (["train.py", "model.core_options.foo=1"], "'foo'"),
    (["train.py", "data.source=mujoco/hopper/medium-v0"], "minari download mujoco/hopper/medium-v0"),
    (["train.py", "data.source=no/such/file.hdf5"], "HDF5 file not found: 'no/such/file.hdf5'"),
    (["eval.py", "planner=bem"], "'bem'"),
    (["eval.py", "cdf_act=often"], "'often'"),
    (["eval.py", "likelihood_weight=0.5"], "'likelihood_weight'"),  # retired: measured no better
    (["eval.py", "checkpoints_path=tests", "planner=critic"], "train_critic.py run=<run dir>"),
    (["eval.py", "checkpoints_path=tests", "planner=beam", "plan_value=critic"], "train_critic.py"),
    (["eval.py", "plan_value=oracle"], "'oracle'"),
    (["profile.py", "quantize=int4"], "'int4'"),
    (["-m", "experiments.lm.train", "model.core=gtp"], "'gtp'"),
    (["-m", "experiments.vit_moe.train", "model.variant=foo"], "'foo'"),
    (["-m", "trajectory.behaviour.train", "no_such_key=1"], "'no_such_key'"),
    (["-m", "trajectory.behaviour.generate", "--episodes", "0"], "--episodes"),
    (["-m", "trajectory.behaviour.card", "missing.pt"], "missing.pt"),
    (["profile.py", "compare=gpt,s6"], "'s6'"),
    (["-m", "planners.demo", "core=gtp"], "'gtp'"),
    (["-m", "planners.demo", "processes=0"], "processes must be at least 1"),
    (["-m", "experiments.lm.train", "model.core=s5", "model.core_options.foo=1"], "'foo'"),
]


@pytest.mark.parametrize("args, names", BAD_INPUTS)
def test_every_cli_refuses_bad_input_in_a_line_or_two_before_any_work(args, names):
    result = run(args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and names in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines()
             if not line.startswith(("usage:", " "))]  # argparse's usage lines come first
    assert len(lines) <= 2, result.stderr  # the error, and the valid choices where there are some


@pytest.mark.parametrize("args, names", BAD_INPUTS)
def test_bad_input_is_refused_before_torch_is_imported(args, names):
    """Importing torch alone takes seconds: every check of a config (core and planner names, core
    options included) runs before it, so a typo is reported at once."""
    launch = (f"runpy.run_module({args[1]!r}, run_name='__main__', alter_sys=True)" if args[0] == "-m"
              else f"runpy.run_path({args[0]!r}, run_name='__main__')")
    argv = [args[1] if args[0] == "-m" else args[0], *args[2 if args[0] == "-m" else 1:]]
    probe = (f"import runpy, sys\nsys.argv = {argv!r}\ntry:\n    {launch}\nexcept SystemExit as e:\n"
             f"    code = e.code\nprint('exit', code, 'torch' in sys.modules)")
    result = run(["-c", probe])
    assert result.stdout.strip().splitlines()[-1] == "exit 2 False", result.stdout + result.stderr[-2000:]
    assert names in result.stderr
