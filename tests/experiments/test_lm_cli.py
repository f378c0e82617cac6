"""The language-model CLIs as users run them: train, sample, torchrun/DDP, grid search."""
import csv
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from _lm_text import write_text_file

from experiments.lm.checkpoint import load_lm_checkpoint
from experiments.lm.config import GridConfig, LMRunConfig
from experiments.lm.grid_search import check_sizes, grid_points
from experiments.lm.model import LM_CORES
from experiments.lm.train import main as train_main
from experiments.lm.train import train
from trajectory.configutil import build_config, parse_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_args(tmp_path, core="gpt", steps=4, **extra) -> list[str]:
    text = tmp_path / "corpus.txt"
    if not text.exists():
        write_text_file(text)
    args = {"data.text_file": str(text), "data.seq_len": 16, "data.holdout_fraction": 0.1,
            "runs_dir": str(tmp_path / "runs"), "name": core, "model.core": core,
            "model.d_model": 16, "model.n_layers": 2, "model.n_heads": 2, "model.dropout": 0.0,
            "model.embedding_dropout": 0.0, "train.batch_size": 4, "train.max_steps": steps,
            "train.eval_every": 2, "train.eval_tokens": 128, "train.log_every": 1, **extra}
    return [f"{k}={v}" for k, v in args.items()]


def run_module(module: str, args: list[str], launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, "-m", module, *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lm")
    args = ["--config=configs/lm/simple_rnn.yaml", *tiny_args(tmp_path, "simple_rnn"),
            "data.tokenizer=bpe", "data.bpe_vocab_size=300"]
    run_module("experiments.lm.train", args)
    return tmp_path / "runs" / "simple_rnn"


def test_train_cli_writes_a_checkpoint_with_validation_bpc(trained_run):
    folder = trained_run / "checkpoint"
    for name in ("config.yaml", "model.pt", "tokenizer.json", "metrics.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["step"] == 4 and [h["step"] for h in metrics["history"]] == [2, 4]
    assert 0 < metrics["val_bpc"] < 20 and metrics["test_bpc"] > 0
    assert metrics["val_loss"] > 0 and metrics["val_perplexity"] == pytest.approx(
        2.718281828 ** metrics["val_loss"], rel=1e-6)
    assert any(name.startswith("events") for name in os.listdir(trained_run / "tb"))
    ckpt = load_lm_checkpoint(str(trained_run))
    assert ckpt.config.model.core_options["variant"] == "fused" and ckpt.tokenizer.vocab_size == 300


def test_sample_cli_generates_from_the_checkpoint(trained_run):
    out = run_module("experiments.lm.sample", [f"checkpoint={trained_run}", "prompt=KING:",
                                               "max_new_tokens=12", "num_samples=2"]).stdout
    samples = [s for s in out.split("--- sample") if s.strip()]
    assert len(samples) == 2 and all(s.split("\n", 1)[1].startswith("KING:") for s in samples)


def test_cli_errors_name_the_fix(tmp_path):
    cmd = [sys.executable, "-m", "experiments.lm.train", f"data.text_file={tmp_path}/none.txt"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "data.text_file" in result.stderr
    cmd = [sys.executable, "-m", "experiments.lm.sample", f"checkpoint={tmp_path}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "checkpoint=runs/lm/" in result.stderr


def test_ddp_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    args = tiny_args(tmp_path, "retnet", steps=3, **{"train.batch_size": 8})
    run_module("experiments.lm.train", [*args, "name=ddp"],
               launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: same kernels, same summation order
    try:
        single = train(parse_cli(LMRunConfig, [*args, "name=single"]))
    finally:
        torch.set_num_threads(threads)
    ddp = load_lm_checkpoint(str(tmp_path / "runs" / "ddp"))
    one = load_lm_checkpoint(str(tmp_path / "runs" / "single"))
    assert ddp.metrics["world_size"] == 2 and single["world_size"] == 1
    state_ddp, state_one = ddp.model.state_dict(), one.model.state_dict()
    for name in state_one:
        torch.testing.assert_close(state_ddp[name], state_one[name], atol=2e-5, rtol=0, msg=name)
    assert ddp.metrics["val_loss"] == pytest.approx(single["val_loss"], abs=1e-4)


def test_resume_continues_exactly(tmp_path):
    # dropout on, so the restored RNG matters; a fixed decay horizon, so both runs share one schedule
    common = {"train.decay_tokens": 4 * 4 * 16, "model.dropout": 0.1, "model.embedding_dropout": 0.1}
    straight = tiny_args(tmp_path, "s5", steps=4, **common)
    assert train_main([*straight, "name=straight"]) == 0
    assert train_main([*tiny_args(tmp_path, "s5", steps=2, **common), "name=halves"]) == 0
    assert train_main(["--resume", str(tmp_path / "runs" / "halves"), "train.max_steps=4"]) == 0
    one = load_lm_checkpoint(str(tmp_path / "runs" / "straight"))
    two = load_lm_checkpoint(str(tmp_path / "runs" / "halves" / "checkpoint"))
    assert two.metrics["step"] == 4 and [h["step"] for h in two.metrics["history"]] == [2, 4]
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(two.model.state_dict()[name], value, atol=0, rtol=0, msg=name)
    assert two.metrics["val_loss"] == one.metrics["val_loss"]


def test_resume_of_a_folder_without_trainer_state_names_the_fix(tmp_path, capsys):
    (tmp_path / "checkpoint").mkdir()
    assert train_main(["--resume", str(tmp_path), "train.max_steps=2"]) == 2
    assert "cannot be resumed" in capsys.readouterr().err


def test_grid_search_on_two_points_writes_csv_and_plot(tmp_path):
    text = tmp_path / "corpus.txt"
    write_text_file(text)
    out = tmp_path / "grid"
    run_module("experiments.lm.grid_search", [
        f"out={out}", f"runs_dir={tmp_path / 'runs'}", f"data.text_file={text}",
        "data.holdout_fraction=0.1", "lrs=[0.003,0.001]",
        "d_models=[16]", "ffn_dims=[32]", "heads=[2]", "seq_lens=[16]", "n_layers=1",
        "train.batch_size=4", "train.max_steps=2", "train.eval_every=0", "train.eval_tokens=64"])
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [(r["point"], r["model"]) for r in rows] == [("0", "retnet"), ("0", "gpt"), ("1", "retnet"),
                                                        ("1", "gpt")]
    for a, b in (rows[0:2], rows[2:4]):
        assert abs(int(a["params"]) - int(b["params"])) / int(b["params"]) <= 0.01
    for r in rows:
        assert float(r["test_loss"]) > 0 and float(r["tokens_per_s"]) > 0 and float(r["test_perplexity"]) > 1
    assert os.path.getsize(f"{out}.png") > 1000
    summary = json.load(open(f"{out}.json"))
    assert sum(summary["wins"].values()) == 2


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs/lm/*.yaml"))))
def test_every_shipped_lm_config_loads(path):
    if os.path.basename(path).startswith("grid_"):
        cfg = build_config(GridConfig, path)
        check_sizes(cfg, grid_points(cfg), vocab_size=cfg.data.bpe_vocab_size)  # matched pairs
    else:
        cfg = build_config(LMRunConfig, path)
        assert cfg.model.core in LM_CORES


def test_time_budgets_count_the_whole_run_across_resumes(tmp_path):
    """As in train.py: a run that has already trained for longer than the budget it is resumed
    with stops after one step, however fresh the process."""
    assert train_main([*tiny_args(tmp_path, "s5", steps=2), "name=run"]) == 0
    state_file = tmp_path / "runs" / "run" / "checkpoint" / "trainer.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["minutes"] > 0  # the time trained so far is saved
    state["minutes"] = 10.0  # as if this run had trained ten minutes
    torch.save(state, state_file)
    assert train_main(["--resume", str(tmp_path / "runs" / "run"), "train.max_steps=50",
                       "train.budget_minutes=5"]) == 0
    metrics = load_lm_checkpoint(str(tmp_path / "runs" / "run")).metrics
    assert metrics["stop_reason"] == "budget_minutes" and metrics["step"] == 3
