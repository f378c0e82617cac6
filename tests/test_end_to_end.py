"""train.py then eval.py as subprocesses, the way users run them, on a tiny D4RL-layout file."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from trajectory.envs import make_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_halfcheetah_hdf5(path, episodes=3, steps=40, seed=0):
    env = make_env("HalfCheetah-v5")
    rng = np.random.default_rng(seed)
    data = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        for t in range(steps):
            action = rng.uniform(-1, 1, size=6).astype(np.float32)
            next_obs, reward, terminated, _, _ = env.step(action)
            for key, value in zip(data, (obs, action, reward, terminated, t == steps - 1)):
                data[key].append(value)
            obs = next_obs
    with h5py.File(path, "w") as f:
        for key, values in data.items():
            f[key] = np.asarray(values)
        f.attrs["env_id"] = "HalfCheetah-v5"


def cli(args, cwd):
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.parametrize("core, quantize", [("gpt", "dynamic"), ("s5", "static")])
def test_train_then_eval_from_the_command_line(tmp_path, core, quantize):
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source)
    common = [f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}", "data.seq_len=4",
              "data.n_bins=16", f"model.core={core}", "model.d_model=16", "model.n_layers=1",
              "model.n_heads=2", "train.batch_size=8", "train.max_tokens=2000",
              f"runs_dir={tmp_path / 'runs'}", "name=tiny"]
    cli([os.path.join(ROOT, "train.py"), *common], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "checkpoint" / "model.pt").exists() and (run_dir / "tb").is_dir()
    cli([os.path.join(ROOT, "train.py"), "--resume", str(run_dir), "train.max_tokens=4000"], cwd=tmp_path)
    metrics = json.loads((run_dir / "checkpoint" / "metrics.json").read_text())
    assert metrics["tokens"] >= 4000 and metrics["stop_reason"] == "max_tokens"
    cli([os.path.join(ROOT, "eval.py"), f"--config={ROOT}/configs/eval_base.yaml", "--device=cpu",
         "--seed=3", f"checkpoints_path={run_dir}", "planner=beam", "n_episodes=2",
         "max_episode_steps=3", "beam_width=2", "beam_steps=1", "beam_context=1"], cwd=tmp_path)
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert len(report["returns"]) == 2 and report["episode_lengths"] == [3, 3]
    assert report["behaviour"]["return_count"] == 3
    assert report["score"]["n"] == 2 and len(report["warnings"]) == 2  # 2 episodes of 3 steps
    assert report["versions"]["torch"] and report["seeds"] == [3, 4]
    from trajectory.models.ops.decode_attention import load
    if core != "gpt":
        assert report["attention_kernel"] == "unused"
    elif load() is not None:  # the kernel builds here: GPT's plans ran on it
        assert report["attention_kernel"] == "fused"
    assert (run_dir / "eval" / "trace.npz").exists()
    assert np.isfinite(report["normalized_mean"])
    # the same checkpoint planned with int8 (static calibrates on the checkpoint's own data)
    cli([os.path.join(ROOT, "eval.py"), f"--config={ROOT}/configs/eval_base.yaml", "--device=cpu",
         f"checkpoints_path={run_dir}", "planner=beam", "n_episodes=1", "max_episode_steps=2",
         "beam_width=2", "beam_steps=1", "beam_context=1", f"quantize={quantize}",
         "calibration_batches=1"], cwd=tmp_path)
    report = json.loads((run_dir / f"eval_{quantize}" / "report.json").read_text())
    assert report["quantization"]["mode"] == quantize and report["episode_lengths"] == [2]
    assert (run_dir / "quantized" / f"model_int8_{quantize}.pt").exists()


def test_sigterm_stops_training_at_a_step_boundary_and_saves(tmp_path):
    import signal
    import time
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source)
    args = [sys.executable, os.path.join(ROOT, "train.py"), f"data.source={source}",
            f"data.cache_dir={tmp_path / 'data'}", "data.seq_len=4", "data.n_bins=16",
            "model.core=s5", "model.d_model=16", "model.n_layers=1", "train.batch_size=8",
            "train.epochs=100000", "train.save_every=0", "train.log_every=1",
            f"runs_dir={tmp_path / 'runs'}", "name=tiny"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    tb = tmp_path / "runs" / "tiny" / "tb"
    deadline = time.time() + 300
    while not (tb.is_dir() and any(tb.iterdir())) and time.time() < deadline:  # training started
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    metrics = json.loads((tmp_path / "runs" / "tiny" / "checkpoint" / "metrics.json").read_text())
    assert metrics["stop_reason"] == "signal" and metrics["progress"]["step"] >= 1


def saved_folder(run_dir) -> tuple | None:
    """Identity of the run's current checkpoint folder (each save renames a new one in): its inode
    and modification time, since a filesystem may give the new folder the inode the old one freed."""
    try:
        stat = (run_dir / "checkpoint").stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def test_sigkill_during_saves_never_loses_the_checkpoint_and_resume_is_exact(tmp_path):
    """train.py saving at every step is killed with SIGKILL at random moments, five times over;
    each time a complete checkpoint loads, and the run resumed after every kill ends with exactly
    the weights of the same run never interrupted."""
    import random
    import signal
    import time

    import torch

    from trajectory.checkpoint import load_checkpoint
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source)
    common = [f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}", "data.seq_len=4",
              "data.n_bins=16", "model.core=s5", "model.d_model=16", "model.n_layers=1",
              "train.batch_size=8", "train.max_tokens=60000", "train.save_every=1", "train.log_every=1",
              f"runs_dir={tmp_path / 'runs'}"]
    train = [sys.executable, os.path.join(ROOT, "train.py")]
    cli([*train[1:], *common, "name=straight"], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "killed"
    rng = random.Random(0)
    steps_seen = []
    for attempt in range(5):
        args = [*train, "--resume", str(run_dir)] if attempt else [*train, *common, "name=killed"]
        before = saved_folder(run_dir)
        process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.time() + 300
        while saved_folder(run_dir) == before and time.time() < deadline:  # this process has saved
            if process.poll() is not None:  # a kill came after the last save: nothing was left to train
                assert process.returncode == 0 and attempt, process.stderr.read()[-3000:]
                break
            time.sleep(0.01)
        if process.poll() is not None:
            break
        time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        checkpoint = load_checkpoint(str(run_dir), with_trainer_state=True)  # complete, every time
        steps_seen.append(checkpoint.trainer_state["progress"]["step"])
    # never back to an older save, and the resumed processes trained and saved before their kill
    assert steps_seen == sorted(steps_seen) and len(set(steps_seen)) > 1, steps_seen
    cli([*train[1:], "--resume", str(run_dir)], cwd=tmp_path)
    straight = load_checkpoint(str(tmp_path / "runs" / "straight"), with_trainer_state=True)
    resumed = load_checkpoint(str(run_dir), with_trainer_state=True)
    assert resumed.trainer_state["progress"]["step"] == straight.trainer_state["progress"]["step"]
    assert steps_seen[0] < resumed.trainer_state["progress"]["step"], steps_seen  # kills hit training
    print("steps at the kills:", steps_seen)
    for name, tensor in straight.model_state.items():
        assert torch.equal(tensor, resumed.model_state[name]), name


def test_the_demo_trains_as_two_ddp_processes(tmp_path):
    """``make demo`` trains through torch's launcher with two 1-thread ranks: one run, saved once,
    its trainer state recording both processes."""
    import torch

    from planners.demo import train_in_processes
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source)
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  seq_len: 4\n  n_bins: 16\nmodel:\n  core: s5\n  d_model: 16\n"
                      "  n_layers: 1\ntrain:\n  batch_size: 8\n")
    train_in_processes(str(config), [f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}",
                                     "train.max_tokens=1584", f"runs_dir={tmp_path / 'runs'}",
                                     "name=tiny", "device=cpu"], processes=2)
    state = torch.load(tmp_path / "runs" / "tiny" / "checkpoint" / "trainer.pt", weights_only=False)
    # 1,584 tokens: 2 batches of 8 windows of 99 inputs
    assert state["world_size"] == 2 and state["progress"]["step"] == 2
    with pytest.raises(RuntimeError, match="exit status"):
        train_in_processes(str(config), ["model.core=nonesuch", f"runs_dir={tmp_path / 'runs'}",
                                         "name=other"], processes=2)


def test_the_demo_scores_both_planners_and_both_policies_on_the_same_seeds(tmp_path, monkeypatch):
    import planners.rollout
    from planners.demo import DemoConfig, evaluate_all
    seen = []
    monkeypatch.setattr(planners.rollout, "evaluate", lambda cfg: seen.append(cfg) or {"cfg": cfg})
    reports = evaluate_all(DemoConfig(episodes=3, eval_steps=7, seed=500), str(tmp_path))
    assert list(reports) == ["critic", "beam", "policy", "policymedian"]
    assert [c.planner for c in seen] == ["critic", "beam", "policy", "policy"]
    assert [c.policy_actions for c in seen[2:]] == ["greedy", "median"]
    assert {(c.seed, c.n_episodes, c.max_episode_steps, c.checkpoints_path) for c in seen} == {
        (500, 3, 7, str(tmp_path))}
    assert [c.out for c in seen] == [str(tmp_path / f"eval_{n}_500") for n in reports]
    assert seen[1].beam_width == 32 and seen[1].cdf_act == 0.6  # the planner as configs/eval_base.yaml
    seen.clear()  # without a critic (critic_minutes=0) the critic planner is left out
    assert list(evaluate_all(DemoConfig(episodes=3, critic_minutes=0), str(tmp_path))) == [
        "beam", "policy", "policymedian"]


def test_the_demo_trains_the_critic_on_its_budget_and_keeps_an_existing_one(tmp_path, monkeypatch):
    import trajectory.training.critic as critic_training
    from planners.demo import DemoConfig, train_demo_critic
    seen = []
    monkeypatch.setattr(critic_training, "train_critic", lambda cfg: seen.append(cfg) or {"step": 7})
    assert train_demo_critic(DemoConfig(critic_minutes=0), str(tmp_path), 2) is None and not seen
    assert train_demo_critic(DemoConfig(critic_minutes=0.5), str(tmp_path), 2) == {"step": 7}
    (cfg,) = seen
    assert (cfg.run, cfg.budget_minutes, cfg.threads, cfg.overwrite) == (str(tmp_path), 0.5, 2, True)
    folder = tmp_path / "critic"  # a run that has its critic keeps it unless retrain=true
    folder.mkdir()
    (folder / "critic.pt").write_bytes(b"x")
    (folder / "metrics.json").write_text('{"step": 3}')
    assert train_demo_critic(DemoConfig(critic_minutes=0.5), str(tmp_path), 2) == {"step": 3}
    assert len(seen) == 1
    train_demo_critic(DemoConfig(critic_minutes=0.5, retrain=True), str(tmp_path), 2)
    assert len(seen) == 2
    # a critic stopped by a signal (Ctrl-C): the demo stops before the model; the next demo trains
    # the critic again instead of keeping it
    monkeypatch.setattr(critic_training, "train_critic",
                        lambda cfg: seen.append(cfg) or {"step": 5, "stop_reason": "signal"})
    with pytest.raises(SystemExit, match="stopped by a signal at step 5"):
        train_demo_critic(DemoConfig(critic_minutes=0.5), str(tmp_path / "fresh"), 2)
    (folder / "metrics.json").write_text('{"step": 3, "stop_reason": "signal"}')
    monkeypatch.setattr(critic_training, "train_critic", lambda cfg: seen.append(cfg) or {"step": 9})
    assert train_demo_critic(DemoConfig(critic_minutes=0.5), str(tmp_path), 2) == {"step": 9}
    assert len(seen) == 4


def test_the_demo_stops_before_scoring_a_model_stopped_by_a_signal(tmp_path, monkeypatch):
    import planners.demo as demo_module
    import trajectory.data.dataset as dataset
    from planners.demo import DemoConfig, demo
    monkeypatch.chdir(tmp_path)  # the recipe's runs_dir is relative: runs/<name>
    monkeypatch.setattr(dataset, "build_dataset", lambda cfg: (None, None, {}))
    monkeypatch.setattr(dataset, "describe", lambda info: "")
    monkeypatch.setattr(demo_module, "train_demo_critic", lambda *a: {"step": 9})
    monkeypatch.setattr(demo_module, "evaluate_all", lambda *a: pytest.fail("a stopped model was scored"))
    checkpoint = tmp_path / "runs" / "halfcheetah-medium-s5-cpu" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "metrics.json").write_text('{"tokens": 12000000, "stop_reason": "signal"}')
    with pytest.raises(SystemExit, match="stopped by a signal at 12M tokens.*retrain=true"):
        demo(DemoConfig())
