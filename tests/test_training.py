import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from _synthetic import LAYOUT, TokenWindows, discretizer, tiny_config

from trajectory.checkpoint import CheckpointError, load_checkpoint
from trajectory.config import TrainConfig
from trajectory.models.trajectory_model import TrajectoryModel
from trajectory.training import distributed
from trajectory.training.optim import lr_at, param_groups
from trajectory.training.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))


def make_trainer(run_dir, **kwargs) -> Trainer:
    cfg = tiny_config(run_dir, **kwargs)
    return Trainer(cfg, TokenWindows(), discretizer(), LAYOUT, distributed.DistContext(), str(run_dir))


def assert_same_parameters(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def test_ddp_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    steps = 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(HERE, "_ddp_worker.py"), str(tmp_path / "ddp"), str(steps), "gpt"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "ddp_params.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: same kernels, same summation order
    single = make_trainer(tmp_path / "single")
    initial = {k: v.clone() for k, v in single.model.state_dict().items()}
    try:
        single.fit(max_steps=steps)
    finally:
        torch.set_num_threads(threads)
    assert_same_parameters(ddp, single.model.state_dict(), atol=2e-5)
    moved = max((ddp[k] - initial[k]).abs().max().item() for k in ddp)
    assert moved > 1e-3  # training actually changed the parameters


def test_resume_continues_exactly(tmp_path):
    straight = make_trainer(tmp_path / "straight", dropout=0.1)  # dropout: RNG state must resume too
    straight.fit(max_steps=8)
    first = make_trainer(tmp_path / "resumed", dropout=0.1)
    first.fit(max_steps=4)
    second = make_trainer(tmp_path / "resumed", dropout=0.1)
    torch.manual_seed(1234)  # scramble the RNG: restore must bring back the saved state
    second.restore(load_checkpoint(str(tmp_path / "resumed"), with_trainer_state=True))
    assert second.progress.step == 4
    second.fit(max_steps=8)
    assert_same_parameters(straight.model.state_dict(), second.model.state_dict(), atol=0)


def test_resuming_a_run_that_reached_max_tokens_trains_no_further_step(tmp_path):
    # a run killed after its last save, then resumed, must end where an uninterrupted run ends
    done = make_trainer(tmp_path / "run")
    done.cfg.train.max_tokens = 3 * done.tokens_per_step
    done.fit()
    assert done.progress.step == 3
    saved = os.path.getmtime(tmp_path / "run" / "checkpoint" / "model.pt")
    again = make_trainer(tmp_path / "run")
    again.cfg.train.max_tokens = done.cfg.train.max_tokens
    again.restore(load_checkpoint(str(tmp_path / "run"), with_trainer_state=True))
    metrics = again.fit()
    assert again.progress.step == 3 and metrics["stop_reason"] == "max_tokens"
    assert_same_parameters(done.model.state_dict(), again.model.state_dict(), atol=0)
    assert os.path.getmtime(tmp_path / "run" / "checkpoint" / "model.pt") == saved  # not rewritten


def test_a_run_saved_with_averaged_weights_loads_its_raw_weights(tmp_path):
    """Runs trained with the retired train.ema_decay saved an average beside the weights, and the
    setting in their config: both are ignored, the last step's weights are what loads."""
    trainer = make_trainer(tmp_path / "run")
    trainer.fit(max_steps=2)
    model_file = tmp_path / "run" / "checkpoint" / "model.pt"
    payload = torch.load(model_file)
    payload["ema_state_dict"] = {k: torch.zeros_like(v) for k, v in payload["state_dict"].items()}
    torch.save(payload, model_file)
    config_file = tmp_path / "run" / "checkpoint" / "config.yaml"
    config_file.write_text(config_file.read_text().replace("train:\n", "train:\n  ema_decay: 0.999\n"))
    saved = load_checkpoint(str(tmp_path / "run"))
    assert_same_parameters(saved.build_model().state_dict(), trainer.model.state_dict(), atol=0)


def test_token_budget_stops_and_saves(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.cfg.train.max_tokens = 3 * trainer.tokens_per_step
    metrics = trainer.fit()
    assert metrics["stop_reason"] == "max_tokens" and trainer.progress.step == 3
    saved = load_checkpoint(trainer.run_dir)
    assert saved.metrics["progress"]["step"] == 3
    model = saved.build_model()
    assert_same_parameters(model.state_dict(), trainer.model.state_dict(), atol=0)


def test_time_budget_stops_and_saves(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.cfg.train.budget_minutes = 1e-9  # spent after the first step
    assert trainer.fit()["stop_reason"] == "budget_minutes"
    assert trainer.progress.step == 1
    assert load_checkpoint(trainer.run_dir).metrics["stop_reason"] == "budget_minutes"


def test_loss_falls_on_a_learnable_pattern(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.cfg.train.log_every = 1
    first = trainer.fit(max_steps=1)["loss"]
    last = trainer.fit(max_steps=200)["loss"]
    assert last < 0.7 * first


def test_corrupt_missing_and_incompatible_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit(max_steps=1)
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.pt").write_bytes((ckpt / "model.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(str(broken))
    (broken / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="missing model.pt"):
        load_checkpoint(str(broken))
    shutil.copy(ckpt / "model.pt", broken / "model.pt")
    text = (broken / "config.yaml").read_text().replace("d_model: 16", "d_model: 32")
    (broken / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(str(broken)).build_model()
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        (broken / "trainer.pt").unlink()
        load_checkpoint(str(broken), with_trainer_state=True)


def test_weight_decay_only_on_weight_matrices():
    cfg = tiny_config("unused").model
    model = TrajectoryModel(cfg, LAYOUT)
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "heads.weight" in names
    assert not any(n.endswith("bias") or "norm" in n or n.startswith("embedding") for n in names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_warmup_then_cosine_on_tokens():
    cfg = TrainConfig(lr=1.0, warmup_tokens=100, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 1100) == pytest.approx(0.01)
    assert lr_at(99, cfg, 1100) == pytest.approx(1.0)
    assert lr_at(600, cfg, 1100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(5000, cfg, 1100) == pytest.approx(0.1)


def test_time_budget_sets_the_schedule_horizon_from_measured_throughput(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.cfg.train.budget_minutes = 0.5
    assert trainer.progress.horizon_tokens == 0  # unknown until the first steps are timed
    trainer.fit(max_steps=12)
    horizon = trainer.progress.horizon_tokens
    assert 12 * trainer.tokens_per_step < horizon <= trainer.epoch_tokens
    saved = load_checkpoint(trainer.run_dir, with_trainer_state=True)
    assert saved.trainer_state["progress"]["horizon_tokens"] == horizon  # resume keeps the schedule


def synthetic_builder(data_cfg):
    """A dataset builder for train(): the synthetic windows, no held-out episodes."""
    return TokenWindows(), discretizer(), {"obs_dim": LAYOUT.obs_dim, "act_dim": LAYOUT.act_dim}


def two_step_run(tmp_path):
    """train() for two steps on the synthetic windows into tmp_path/tiny; returns its config."""
    from trajectory.training.trainer import train
    cfg = tiny_config(tmp_path)
    cfg.train.max_tokens = 2 * cfg.train.batch_size * (LAYOUT.max_tokens - 1)
    train(cfg, dataset_builder=synthetic_builder)
    return cfg


def test_a_fresh_run_never_overwrites_an_existing_one_and_resume_takes_either_folder(tmp_path):
    from trajectory.configutil import ConfigError
    from trajectory.training.trainer import train

    builder = synthetic_builder
    cfg = two_step_run(tmp_path)
    run_dir = tmp_path / "tiny"
    first = (run_dir / "checkpoint" / "model.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a trained run.*--resume"):
        train(cfg, dataset_builder=builder)
    assert (run_dir / "checkpoint" / "model.pt").read_bytes() == first  # untouched
    # --resume with the checkpoint folder itself continues the run in place
    cfg.train.max_tokens *= 2
    metrics = train(cfg, resume_dir=str(run_dir / "checkpoint"), dataset_builder=builder)
    assert metrics["step"] == 4 and not (run_dir / "checkpoint" / "checkpoint").exists()
    cfg.overwrite = True
    assert train(cfg, dataset_builder=builder)["step"] == 4  # a new run from step 0 to 4


def test_time_budget_horizon_is_re_measured_after_start_up(tmp_path, monkeypatch):
    import trajectory.training.trainer as trainer_module
    trainer = make_trainer(tmp_path)
    trainer.cfg.train.budget_minutes = 10.0
    trainer.epoch_tokens = 10 ** 12  # the epochs never bind here
    per_step = trainer.tokens_per_step
    clock = {"now": 100.0}
    monkeypatch.setattr(trainer_module.time, "time", lambda: clock["now"])
    # first estimate: 10 steps in 20 s of a session that started at t = 80 (slow start-up)
    trainer._probe = None
    trainer.progress.step, trainer.progress.tokens, trainer.progress.minutes = 10, 10 * per_step, 20 / 60
    trainer._fix_time_horizon(session_start=80.0, session_steps=10)
    first = trainer.progress.horizon_tokens
    assert first == pytest.approx(10 * per_step + (10 / 20) * per_step * (600 - 20), rel=1e-6)
    # 200 steps later at 2 steps/s: the horizon grows to what the real speed buys
    clock["now"] = 200.0
    trainer.progress.step, trainer.progress.tokens, trainer.progress.minutes = 210, 210 * per_step, 120 / 60
    trainer._fix_time_horizon(session_start=80.0, session_steps=210)
    assert trainer.progress.horizon_tokens == pytest.approx(210 * per_step + 2 * per_step * 480, rel=1e-6)
    assert trainer.progress.horizon_tokens > first


def test_a_wrong_core_or_core_option_fails_before_any_data_is_built(tmp_path):
    from trajectory.configutil import ConfigError
    from trajectory.training.trainer import train

    def builder(data_cfg):
        raise AssertionError("the dataset must not be built")

    cfg = tiny_config(tmp_path)
    cfg.model.core = "gtp"
    with pytest.raises(ConfigError, match="unknown core 'gtp'; choose one of: gpt"):
        train(cfg, dataset_builder=builder)
    cfg.model.core, cfg.model.core_options = "s5", {"no_such_option": 1}
    with pytest.raises(ConfigError, match="no_such_option"):
        train(cfg, dataset_builder=builder)


def test_resume_refuses_a_changed_data_model_or_batch(tmp_path):
    from trajectory.configutil import ConfigError
    from trajectory.training.trainer import train

    builder = synthetic_builder
    cfg = two_step_run(tmp_path)
    run_dir = str(tmp_path / "tiny")
    for section, key, value in (("data", "n_bins", 8), ("model", "d_model", 32), ("train", "batch_size", 8)):
        changed = tiny_config(tmp_path)
        setattr(getattr(changed, section), key, value)
        with pytest.raises(ConfigError, match=f"changed {section}.{key}"):
            train(changed, resume_dir=run_dir, dataset_builder=builder)
    longer = tiny_config(tmp_path)
    longer.train.max_tokens = 2 * cfg.train.max_tokens  # budgets may change
    assert train(longer, resume_dir=run_dir, dataset_builder=builder)["step"] == 4


def test_a_save_cut_off_between_its_renames_or_while_writing_loses_nothing(tmp_path, monkeypatch):
    import trajectory.checkpoint as checkpoint_module
    trainer = make_trainer(tmp_path)
    trainer.fit(max_steps=2)
    first = load_checkpoint(trainer.run_dir)
    assert first.metrics["progress"]["step"] == 2
    # crash while writing the new checkpoint: the old one stays, no temporary folder is left
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if str(getattr(f, "name", f)).endswith("trainer.pt"):  # a path or a file object
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save({})
    monkeypatch.undo()
    assert sorted(os.listdir(trainer.run_dir)).count("checkpoint") == 1
    assert not [d for d in os.listdir(trainer.run_dir) if ".tmp-" in d]
    # crash between moving the old checkpoint aside and renaming the new one in
    trainer.fit(max_steps=3)
    real_replace = os.replace

    def replace_then_die(src, dst):
        if os.path.isdir(src) and ".tmp-" in os.path.basename(src):  # the new folder's rename
            raise KeyboardInterrupt  # the process dies here, the old one already moved aside
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.save({})
    monkeypatch.undo()
    assert not os.path.isdir(os.path.join(trainer.run_dir, "checkpoint"))
    recovered = load_checkpoint(trainer.run_dir, with_trainer_state=True)
    assert recovered.metrics["progress"]["step"] == 3  # the newer, complete one
    assert_same_parameters(recovered.model_state, trainer.model.state_dict(), atol=0)
    trainer.save({})  # the next save puts checkpoint/ back and clears what the crash left
    assert sorted(os.listdir(trainer.run_dir)) == ["checkpoint"] + (["tb"] if os.path.isdir(
        os.path.join(trainer.run_dir, "tb")) else [])


def test_a_time_budgeted_bar_counts_minutes_of_the_budget(tmp_path):
    from trajectory.training.monitor import TrainLogger
    logger = TrainLogger(str(tmp_path), True, total_steps=100, initial_step=10, budget_minutes=20,
                         initial_minutes=5.0)
    assert logger.bar.total == 20 and logger.bar.n == 5.0  # a resumed run starts where it was
    logger.advance(11, torch.tensor(1.0), minutes=7.5)
    logger.set_total(3)  # a step estimate does not replace the budget
    assert logger.bar.total == 20 and logger.bar.n == 7.5
    logger.advance(12, torch.tensor(1.0), minutes=25.0)  # the last step may end past the budget
    assert logger.bar.n == 20
    logger.close()
    steps = TrainLogger(str(tmp_path / "steps"), True, total_steps=100)
    steps.advance(40, torch.tensor(1.0), minutes=3.0)
    assert steps.bar.total == 100 and steps.bar.n == 40
    steps.close()


def test_resuming_a_run_that_finished_its_epochs_ends_cleanly(tmp_path):
    first = make_trainer(tmp_path)
    first.cfg.train.epochs = 1
    metrics = first.fit()
    assert metrics["stop_reason"] == "epochs" and first.progress.step == first.steps_per_epoch
    again = make_trainer(tmp_path)
    again.cfg.train.epochs = 1
    again.restore(load_checkpoint(str(tmp_path), with_trainer_state=True))
    metrics = again.fit()  # nothing left to train: no step, no crash, the checkpoint still loads
    assert metrics["stop_reason"] == "epochs" and again.progress.step == first.steps_per_epoch
    assert load_checkpoint(str(tmp_path)).metrics["stop_reason"] == "epochs"


def test_training_hands_sigterm_back_when_it_ends(tmp_path):
    """During training SIGTERM asks for a save at the next step; afterwards (``make demo`` goes
    on to evaluate in the same process) it must stop the process again, as before training."""
    import signal

    def previous(signum, frame):
        raise AssertionError("not called")
    old = signal.signal(signal.SIGTERM, previous)
    try:
        two_step_run(tmp_path)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)
