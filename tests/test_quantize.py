import os
import subprocess
import sys

import pytest
import torch
from _synthetic import LAYOUT, TokenWindows, discretizer, tiny_config

from planners.beam import BeamPlanner
from trajectory.config import EvalConfig, ModelConfig
from trajectory.configutil import ConfigError
from trajectory.models.cores import CORES
from trajectory.models.trajectory_model import EinLinear, TokenLayout, TrajectoryModel
from trajectory.quantize import (
    LinearHeads,
    QuantizationError,
    float_ops,
    int8_targets,
    load_quantized,
    quantize_model,
    save_quantized,
    state_bytes,
)
from trajectory.training import distributed
from trajectory.training.trainer import Trainer

MODES = ("dynamic", "static")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model per core trained on the synthetic pattern, so its predictions are confident
    (on a random model every logit is a near-tie and agreement would measure noise)."""
    models = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for core in sorted(CORES):
            run_dir = tmp_path_factory.mktemp(core)
            cfg = tiny_config(run_dir)
            cfg.model.core, cfg.model.core_options = core, {}
            trainer = Trainer(cfg, TokenWindows(), discretizer(), LAYOUT, distributed.DistContext(),
                              str(run_dir))
            trainer.fit(max_steps=60)
            models[core] = trainer.model.eval()
    finally:
        torch.set_num_threads(threads)
    return models


def held_out(n: int = 64) -> torch.Tensor:
    return TokenWindows(n=n, seed=1).tokens[:, :-1]


def calibration() -> list[torch.Tensor]:
    return [TokenWindows(n=32, seed=2).tokens[:, :-1]]


def step_through(model, tokens: torch.Tensor, chunks=(1,)) -> torch.Tensor:
    state, outs, t, i = model.init_state(tokens.shape[0], "cpu"), [], 0, 0
    while t < tokens.shape[1]:
        size = chunks[i % len(chunks)]
        logits, state = model.step(tokens[:, t:t + size], state)
        outs.append(logits)
        t, i = t + size, i + 1
    return torch.cat(outs, 1)


@torch.no_grad()
def test_linear_heads_equal_the_batched_heads_in_every_call_shape():
    torch.manual_seed(0)
    heads = EinLinear(5, 8, 6)
    linear = LinearHeads(heads)
    x = torch.randn(3, 4, 5, 8)
    torch.testing.assert_close(linear(x), heads(x), atol=1e-6, rtol=0)
    slots = torch.tensor([3, 4, 0, 1, 2, 3, 4])  # a prefill chunk: slots repeat
    y = torch.randn(3, 7, 8)
    torch.testing.assert_close(linear(y, slots=slots), heads(y, slots=slots), atol=1e-6, rtol=0)
    one = torch.tensor([2])  # decoding: one token
    torch.testing.assert_close(linear(y[:, :1], slots=one), heads(y[:, :1], slots=one), atol=1e-6, rtol=0)


@pytest.mark.parametrize("core", sorted(CORES))
def test_every_linear_and_the_heads_are_int8_except_exempt_filters(trained, core):
    model = trained[core]
    core_linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    quantized = quantize_model(model, "dynamic")
    int8 = [n for n, m in quantized.named_modules()
            if type(m).__module__.startswith("torch.ao.nn.quantized") and hasattr(m, "weight")]
    floats = [n for n, m in quantized.named_modules() if type(m) is torch.nn.Linear]
    assert all(".filter." in n for n in floats), floats  # only Hyena's implicit filter MLP stays float
    assert len(int8) == len(core_linears) - len(floats) + LAYOUT.transition_dim
    assert sum(n.startswith("heads.maps.") for n in int8) == LAYOUT.transition_dim
    assert sorted(int8_targets(model)) == sorted(set(core_linears) - set(floats))
    assert set(float_ops(model)) >= set(model.core.float_ops) and model.core.float_ops
    assert isinstance(model.heads, EinLinear)  # the float model is left untouched


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", sorted(CORES))
@torch.no_grad()
def test_quantized_predictions_agree_with_fp32(trained, core, mode):
    # int8 weights per output channel round each weight to 1/254 of its channel's range, and the
    # activations to 1/255 of theirs (dynamic: per call; static: calibrated): the logits move by
    # about 1% of their scale, which flips only near-ties. Trained tiny models agree on 95-99% of
    # next tokens (0.2% KL); 90% and 0.01 nats leave room for seeds while catching a wrong scale,
    # a dropped bias or a mis-ordered head, each of which drops agreement to chance (~6% here).
    model = trained[core]
    tokens = held_out()
    reference = model(tokens).log_softmax(-1)
    quantized = quantize_model(model, mode, calibration())
    out = quantized(tokens).log_softmax(-1)
    agreement = (out.argmax(-1) == reference.argmax(-1)).float().mean().item()
    kl = (reference.exp() * (reference - out)).sum(-1).mean().item()
    assert agreement >= 0.90, agreement
    assert kl < 0.01, kl


@pytest.mark.parametrize("core", sorted(CORES))
@torch.no_grad()
def test_step_forms_work_after_quantization(trained, core):
    tokens = held_out(16)
    static = quantize_model(trained[core], "static", calibration())
    # static scales are fixed, so the step form is the parallel form up to float reordering
    torch.testing.assert_close(step_through(static, tokens, chunks=(4, 1, 9)), static(tokens),
                               atol=1e-4, rtol=0)
    # dynamic scales follow each call's inputs: decoding token by token differs slightly
    dynamic = quantize_model(trained[core], "dynamic")
    stepped = step_through(dynamic, tokens)
    agreement = (stepped.argmax(-1) == dynamic(tokens).argmax(-1)).float().mean().item()
    assert agreement >= 0.90, agreement


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("core", sorted(CORES))
def test_quantized_models_plan_end_to_end(trained, core, mode):
    from test_planner import eval_cfg, fitted_discretizer
    quantized = quantize_model(trained[core], mode, calibration())
    cfg = eval_cfg()
    context = torch.randint(0, LAYOUT.vocab, (2, LAYOUT.transition_dim + LAYOUT.obs_dim))
    plan = BeamPlanner(quantized, fitted_discretizer(LAYOUT), LAYOUT, cfg,
                       torch.Generator().manual_seed(0)).plan(context)
    assert plan.actions.shape == (2, cfg.beam_steps, LAYOUT.act_dim)
    assert plan.actions.min() >= 0 and plan.actions.max() < LAYOUT.vocab  # action tokens
    assert torch.isfinite(plan.score).all() and torch.isfinite(plan.rewards).all()


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_a_quantized_model_saves_and_loads_without_recalibration(trained, tmp_path, mode):
    model = trained["retnet"]
    quantized = quantize_model(model, mode, calibration())
    path = tmp_path / f"{mode}.pt"
    save_quantized(quantized, str(path))
    loaded = load_quantized(model, str(path))
    tokens = held_out(8)
    assert torch.equal(loaded(tokens), quantized(tokens))
    assert loaded.quantization == mode


def test_int8_files_are_smaller_at_a_real_width(tmp_path):
    # at width 16 the per-channel scales and serialization headers outweigh the saved bytes
    layout = TokenLayout(obs_dim=3, act_dim=2, vocab=100, seq_len=3)
    model = TrajectoryModel(ModelConfig(core="gpt", d_model=128, n_layers=2, n_heads=4), layout).eval()
    fp32 = state_bytes(model, str(tmp_path / "fp32.pt"))
    int8 = save_quantized(quantize_model(model, "dynamic"), str(tmp_path / "int8.pt"))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear += model.heads.weight.numel()
    assert fp32 - int8 > 0.6 * 3 * linear  # most of the 3 bytes per linear weight are saved


def test_bad_inputs_give_clear_errors(trained, tmp_path):
    model = trained["s5"]
    with pytest.raises(QuantizationError, match="calibration"):
        quantize_model(model, "static")
    with pytest.raises(QuantizationError, match="none, dynamic, static"):
        quantize_model(model, "int4")
    with pytest.raises(QuantizationError, match="no quantized model"):
        load_quantized(model, str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(QuantizationError, match="corrupt"):
        load_quantized(model, str(corrupt))
    other = quantize_model(trained["gpt"], "dynamic")
    save_quantized(other, str(tmp_path / "gpt.pt"))
    with pytest.raises(QuantizationError, match="does not fit"):
        load_quantized(model, str(tmp_path / "gpt.pt"))
    with pytest.raises(ConfigError, match="quantize must be one of"):
        EvalConfig(quantize="dynamic,int4")


def test_no_deprecation_warnings_reach_users(tmp_path):
    script = """
import torch
from trajectory.config import ModelConfig
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel
from trajectory.quantize import load_quantized, quantize_model, save_quantized
layout = TokenLayout(obs_dim=3, act_dim=2, vocab=16, seq_len=3)
model = TrajectoryModel(ModelConfig(core="gpt", d_model=16, n_layers=1, n_heads=2), layout).eval()
tokens = torch.randint(0, 16, (4, layout.max_tokens - 1))
for mode in ("dynamic", "static"):
    quantized = quantize_model(model, mode, [tokens])
    quantized(tokens)
    save_quantized(quantized, "q.pt")
    load_quantized(model, "q.pt")(tokens)
print("done")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]
    assert "warn" not in result.stderr.lower(), result.stderr[-2000:]


def test_deprecation_filters_stay_inside_the_package_calls():
    """Importing the package and quantizing leave the program's own warning filters as they were:
    a deprecation warning raised by other code with the same words still reaches it."""
    script = """
import warnings
before = list(warnings.filters)
import torch
from trajectory.config import ModelConfig
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel
from trajectory.quantize import quantize_model
layout = TokenLayout(obs_dim=3, act_dim=2, vocab=16, seq_len=3)
model = TrajectoryModel(ModelConfig(core="gpt", d_model=16, n_layers=1, n_heads=2), layout).eval()
tokens = torch.randint(0, 16, (4, layout.max_tokens - 1))
quantize_model(model, "static", [tokens])(tokens)
assert [f for f in warnings.filters if "quantiz" in str(f[1])] == [], warnings.filters[:5]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    warnings.warn("torch.ao.quantization is deprecated (raised by the user's own code)")
assert len(caught) == 1
print("done")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]


@torch.no_grad()
def test_eval_reuses_the_saved_int8_model_only_when_it_matches_the_weights(trained, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from trajectory.data import dataset as dataset_module
    from trajectory.quantize import quantize_checkpoint_model
    calls = []

    class Windows:  # the checkpoint's training windows, as build_dataset would give them
        tokens = TokenWindows(n=64, seed=2).tokens

        def __len__(self):
            return len(self.tokens)

        def batch(self, index):
            return {"x": self.tokens[index, :-1]}

    def fake_build_dataset(data_cfg):
        calls.append(data_cfg)
        return Windows(), None, None
    monkeypatch.setattr(dataset_module, "build_dataset", fake_build_dataset)
    checkpoint = SimpleNamespace(config=SimpleNamespace(data="data config"))
    model = trained["gpt"]
    first, info = quantize_checkpoint_model(checkpoint, model, "static", 1, out_dir=str(tmp_path))
    assert len(calls) == 1 and info["reused_saved_file"] is False and os.path.isfile(info["path"])
    again, info = quantize_checkpoint_model(checkpoint, model, "static", 1, out_dir=str(tmp_path))
    assert len(calls) == 1 and info["reused_saved_file"] is True  # no recalibration, no dataset
    tokens = held_out(8)
    assert torch.equal(again(tokens), first(tokens))
    _, info = quantize_checkpoint_model(checkpoint, model, "static", 2, out_dir=str(tmp_path))
    assert len(calls) == 2 and info["reused_saved_file"] is False  # other settings: made again
    changed = TrajectoryModel(model.cfg, model.layout).eval()  # other weights: made again
    changed.load_state_dict(model.state_dict())
    next(changed.parameters()).add_(0.01)
    _, info = quantize_checkpoint_model(checkpoint, changed, "static", 2, out_dir=str(tmp_path))
    assert len(calls) == 3 and info["reused_saved_file"] is False


@pytest.mark.parametrize("core", ["gpt", "s5"])
@torch.no_grad()
def test_compiled_int8_steps_agree_with_fp32(trained, core):
    """quantize=compiled: the core's linear maps int8 through torchao, the one-token step compiled;
    decoding token by token predicts what the fp32 model predicts (as the eager int8 modes do)."""
    from trajectory.quantize_compiled import int8_layers
    model = trained[core]
    tokens = held_out(16)[:, :12]
    compiled = quantize_model(model, "compiled")
    assert int8_layers(compiled) > 0 and int8_layers(model) == 0  # the original is left in float
    stepped = step_through(compiled, tokens).log_softmax(-1)
    reference = model(tokens).log_softmax(-1)
    agreement = (stepped.argmax(-1) == reference.argmax(-1)).float().mean().item()
    kl = (reference.exp() * (reference - stepped)).sum(-1).mean().item()
    assert agreement >= 0.90, agreement
    assert kl < 0.01, kl


def test_compiled_int8_without_torchao_is_one_line_naming_the_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(ConfigError, match="quantize=compiled needs torchao, which is not installed: pip"):
        EvalConfig(quantize="compiled")
    with pytest.raises(ConfigError, match="quantize=compiled compiles int8 steps"):
        EvalConfig(quantize="dynamic", compile_step=True)
