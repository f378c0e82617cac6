"""The ViT-MoE trainer: CLI smoke runs, checkpoints, DDP equivalence, losses and schedule."""
import os
import subprocess
import sys

import pytest
import torch

from experiments.vit_moe.checkpoint import CheckpointError, load_checkpoint
from experiments.vit_moe.config import RunConfig, TrainConfig
from experiments.vit_moe.data import load_images
from experiments.vit_moe.evaluate import EvalConfig, evaluate_run
from experiments.vit_moe.train import Trainer, lr_at, symmetric_kl, train
from experiments.vit_moe.train import main as train_main
from trajectory.configutil import ConfigError, build_config
from trajectory.training.distributed import DistContext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["data.source=synthetic", "model.patch_size=4", "model.d_model=16", "model.n_layers=2",
        "model.n_heads=2", "model.d_ff=32", "model.n_experts=3", "train.batch_size=32"]


def config(tmp_path, variant: str, *overrides: str) -> RunConfig:
    return build_config(RunConfig, os.path.join(ROOT, "configs", "vit_moe", f"{variant}.yaml"),
                        [*TINY, f"runs_dir={tmp_path}", *overrides])


def cli(tmp_path, variant: str, *overrides: str, launcher=(sys.executable, "-m")):
    args = [*launcher, "experiments.vit_moe.train", f"--config=configs/vit_moe/{variant}.yaml", *TINY,
            f"runs_dir={tmp_path}", *overrides]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_trains_and_writes_a_checkpoint_that_reloads(tmp_path):
    result = cli(tmp_path, "random", "train.max_steps=3", "train.consistency_weight=1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random: test accuracy" in result.stdout
    cfg, model, metrics = load_checkpoint(str(tmp_path / "vit_moe-random"))
    assert cfg.model.variant == "random" and cfg.train.consistency_weight == 1.0
    assert metrics["history"][-1]["step"] == 3
    assert metrics["parameters"]["inference"] < metrics["parameters"]["total"]
    assert not model.training and os.listdir(tmp_path / "vit_moe-random" / "tb")  # tensorboard events
    images = load_images(cfg.data, seed=cfg.seed)
    x = images.normalise(images.test_images[:8])
    _, fresh, _ = load_checkpoint(str(tmp_path / "vit_moe-random" / "checkpoint"))
    torch.testing.assert_close(model(x)[0], fresh(x)[0], rtol=0, atol=0)
    # Export: the averaged experts as a plain ViT run, scoring what the random-routing model scores.
    report = evaluate_run(EvalConfig(run=str(tmp_path / "vit_moe-random"), dense_out=str(tmp_path / "dense")))
    dense_cfg, dense, _ = load_checkpoint(str(tmp_path / "dense"))
    assert dense_cfg.model.variant == "vit" and report["dense"]["test"] == report["test"]
    assert dense.num_parameters() == report["parameters"]["inference"]
    torch.testing.assert_close(dense(x)[0], model(x)[0], rtol=0, atol=1e-5)


def test_cli_errors_are_one_clear_line(tmp_path):
    missing = cli(tmp_path, "vit", "data.source=fashion_mnist", f"data.root={tmp_path}/none")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "apt-get install dataset-fashion-mnist" in missing.stderr and "data.root=" in missing.stderr
    typo = cli(tmp_path, "vit", "model.n_expert=2")
    assert typo.returncode == 2 and "Did you mean: model.n_experts" in typo.stderr
    with pytest.raises(ConfigError, match="consistency_weight needs model.variant=random"):
        config(tmp_path, "moe", "train.consistency_weight=1")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "nowhere"))


def ddp_run(tmp_path, variant: str):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m")
    return cli(tmp_path, variant, "train.max_steps=4", launcher=launcher)


def test_ddp_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    result = ddp_run(tmp_path / "ddp", "vit")
    assert result.returncode == 0, result.stderr[-3000:]
    _, ddp, metrics = load_checkpoint(str(tmp_path / "ddp" / "vit_moe-vit"))
    assert metrics["world_size"] == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: same kernels, same summation order
    try:
        cfg = config(tmp_path / "single", "vit", "train.max_steps=4")
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    _, single, _ = load_checkpoint(str(tmp_path / "single" / "vit_moe-vit"))
    torch.manual_seed(cfg.seed)
    initial = type(single)(cfg.model, single.spec).state_dict()
    D = cfg.model.d_model
    for name, value in single.state_dict().items():
        other = ddp.state_dict()[name]
        if name.endswith("attn.qkv.bias"):
            # The key bias adds the same score to every key of a query, so its gradient is zero in
            # exact arithmetic; Adam turns the rounding noise into full-size steps. Compare q and v.
            value, other = value[torch.arange(3 * D) // D != 1], other[torch.arange(3 * D) // D != 1]
        torch.testing.assert_close(other, value, rtol=0, atol=2e-5, msg=name)
    moved = max((value - initial[name]).abs().max().item() for name, value in single.state_dict().items())
    assert moved > 1e-3  # training changed the parameters


def test_ddp_runs_random_routing(tmp_path):
    result = ddp_run(tmp_path, "random")
    assert result.returncode == 0, result.stderr[-3000:]
    _, model, metrics = load_checkpoint(str(tmp_path / "vit_moe-random"))
    assert metrics["world_size"] == 2 and metrics["history"][-1]["step"] == 4


@pytest.mark.parametrize("variant", ["vit", "moe", "random"])
def test_every_variant_learns_the_synthetic_task(tmp_path, variant):
    cfg = config(tmp_path, variant, "train.epochs=4", "train.lr=0.003")
    trainer = Trainer(cfg, load_images(cfg.data, seed=cfg.seed), DistContext(), quiet=True)
    history = trainer.fit()["history"]
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.9


def test_interleaved_runs_give_the_results_of_runs_alone(tmp_path):
    cfg = config(tmp_path, "random", "train.max_steps=3")
    images = load_images(cfg.data, seed=cfg.seed)
    alone = Trainer(cfg, images, DistContext(), quiet=True)
    alone.fit()
    first, second = (Trainer(cfg, images, DistContext(), quiet=True) for _ in range(2))
    steps = [first.epoch_steps(), second.epoch_steps()]
    while steps:
        steps = [s for s in steps if next(s, None) is not None]
    for a, b in zip(alone.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)


def test_resume_at_an_epoch_end_continues_exactly(tmp_path):
    # random routing and dropout: the resumed run must draw what the straight run drew
    common = ("train.epochs=2", "data.train_limit=96", "data.test_limit=32", "model.dropout=0.1")
    straight = train(config(tmp_path, "random", *common, "name=straight"))
    halves = config(tmp_path, "random", *common, "name=halves")
    Trainer(halves, load_images(halves.data, seed=halves.seed), DistContext(), quiet=True).train_epoch()
    assert train_main(["--resume", str(tmp_path / "halves")]) == 0
    _, one, _ = load_checkpoint(str(tmp_path / "straight"))
    _, two, metrics = load_checkpoint(str(tmp_path / "halves"))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][-1]["test_accuracy"] == straight["history"][-1]["test_accuracy"]
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_resume_without_trainer_state_names_the_fix(tmp_path, capsys):
    (tmp_path / "checkpoint").mkdir()
    assert train_main(["--resume", str(tmp_path)]) == 2
    assert "cannot be resumed" in capsys.readouterr().err


def test_learning_rate_schedule_and_consistency_loss():
    tc = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert lr_at(0, 100, tc) == pytest.approx(0.1) and lr_at(9, 100, tc) == pytest.approx(1.0)
    assert lr_at(55, 100, tc) == pytest.approx(0.55) and lr_at(100, 100, tc) == pytest.approx(0.1)
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    kl = torch.nn.functional.kl_div
    expected = 0.5 * (kl(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="batchmean")
                      + kl(a.log_softmax(-1), b.log_softmax(-1), log_target=True, reduction="batchmean"))
    torch.testing.assert_close(symmetric_kl(a, b), expected)
