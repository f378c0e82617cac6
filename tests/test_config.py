import dataclasses
import glob
import math
import os
import typing

import pytest
from omegaconf import OmegaConf

from trajectory.config import EvalConfig, TrainRunConfig
from trajectory.configutil import ConfigError, Interval, build_config, parse_cli, split_argv, to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_base_yaml_matches_dataclass_defaults():
    from_yaml = OmegaConf.to_container(OmegaConf.load(os.path.join(ROOT, "configs/base.yaml")))
    defaults = to_dict(TrainRunConfig())
    from_yaml["train"]["betas"] = tuple(from_yaml["train"]["betas"])
    defaults["train"]["betas"] = tuple(defaults["train"]["betas"])
    assert from_yaml == defaults


def test_eval_base_yaml_lists_every_key_with_the_dataclass_defaults():
    path = os.path.join(ROOT, "configs/eval_base.yaml")
    assert set(OmegaConf.to_container(OmegaConf.load(path))) == set(to_dict(EvalConfig()))
    assert build_config(EvalConfig, path) == EvalConfig()
    assert EvalConfig().planner == "recipe"  # each run plans as its recipe says (the README's headline)


def test_retired_settings_load_from_saved_configs_but_are_refused_on_the_command_line(tmp_path):
    saved = tmp_path / "old.yaml"
    saved.write_text("planner: beam\nlikelihood_weight: 0.5\npercentile: mean\nweights: ema\n")
    assert build_config(EvalConfig, str(saved)).planner == "beam"
    with pytest.raises(ConfigError, match="'likelihood_weight'.*It was removed"):
        parse_cli(EvalConfig, ["likelihood_weight=0.5"])
    old_run = to_dict(TrainRunConfig())
    old_run["train"]["ema_decay"] = 0.999
    from trajectory.configutil import from_dict
    assert not hasattr(from_dict(TrainRunConfig, old_run).train, "ema_decay")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs/medium/*.yaml"))
                                        + glob.glob(os.path.join(ROOT, "configs/cpu/*.yaml"))))
def test_every_shipped_training_config_loads(path):
    cfg = build_config(TrainRunConfig, path)
    assert cfg.model.core in ("gpt", "hyena", "retnet", "s5")
    assert cfg.name


def test_both_cli_styles():
    cfg = parse_cli(EvalConfig, ["--config=configs/eval_base.yaml".replace("configs", f"{ROOT}/configs"),
                                 "--device=cuda", "--seed=7", "checkpoints_path=runs/x",
                                 "beam_width=16", "--beam_steps", "3"])
    assert (cfg.device, cfg.seed, cfg.checkpoints_path, cfg.beam_width, cfg.beam_steps) == \
        ("cuda", 7, "runs/x", 16, 3)
    path, dotlist = split_argv(['--config="a.yaml"'.replace('"', ""), "model.n_layers=2"])
    assert path == "a.yaml" and dotlist == ["model.n_layers=2"]


def test_nested_overrides_reach_their_section():
    cfg = parse_cli(TrainRunConfig, ["model.n_layers=2", "train.budget_minutes=20", "data.packed=true"])
    assert cfg.model.n_layers == 2 and cfg.train.budget_minutes == 20 and cfg.data.packed is True


@pytest.mark.parametrize("argv, fragment", [
    (["model.n_layerz=2"], "model.n_layers"),           # typo: suggests the right key
    (["beam_width=3"], "Valid keys"),                   # an eval key given to train
    (["train.lr=fast"], "train.lr"),                    # wrong type
    (["--config=/no/such/file.yaml"], "not found"),     # missing file
    (["data.strategy=median"], "uniform"),              # invalid choice
    (["oops"], "key=value"),                            # not an assignment
])
def test_bad_input_is_one_clear_error(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_cli(TrainRunConfig, argv)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  n_layer: 2\n")
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        parse_cli(TrainRunConfig, [f"--config={path}"])
    assert "model.n_layers" in str(err.value)


def test_a_removed_setting_in_a_saved_config_still_loads_but_is_refused_on_the_command_line(tmp_path):
    from trajectory.config import TrainRunConfig
    from trajectory.configutil import ConfigError, build_config, from_dict
    saved = tmp_path / "config.yaml"
    saved.write_text("name: old\ntrain:\n  batch_size: 32\n  num_workers: 0\n")  # written before removal
    assert build_config(TrainRunConfig, str(saved)).train.batch_size == 32
    assert from_dict(TrainRunConfig, {"train": {"num_workers": 0, "lr": 0.1}}).train.lr == 0.1
    with pytest.raises(ConfigError, match="unknown config key 'train.num_workers'"):
        build_config(TrainRunConfig, None, ["train.num_workers=2"])


def test_attention_kernel_choice_is_checked_before_any_work():
    assert parse_cli(EvalConfig, ["attention_kernel=torch"]).attention_kernel == "torch"
    with pytest.raises(ConfigError, match="attention_kernel must be one of auto, torch, fused"):
        parse_cli(EvalConfig, ["attention_kernel=flash"])


def _config_classes() -> list[type]:
    """Every config dataclass a command line fills (their sections included)."""
    import experiments.lm.config as lm
    import experiments.vit_moe.config as vit
    from experiments.vit_moe.evaluate import EvalConfig as VitEvalConfig
    from planners.demo import DemoConfig
    from trajectory.behaviour.config import SACConfig
    from trajectory.config import DataConfig, ModelConfig, TrainConfig
    return [DataConfig, ModelConfig, TrainConfig, TrainRunConfig, EvalConfig, SACConfig, DemoConfig,
            lm.LMDataConfig, lm.LMModelConfig, lm.LMTrainConfig, lm.LMRunConfig, lm.SampleConfig,
            lm.GridConfig, vit.DataConfig, vit.ModelConfig, vit.TrainConfig, vit.RunConfig, VitEvalConfig]


NUMBERS = (int, float)
# numeric settings whose check depends on another setting, written out in the class itself
RANGE_CHECKED_ELSEWHERE = {"LMDataConfig.bpe_vocab_size"}


def _numeric_fields(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if hint in NUMBERS or hint is tuple or (args and all(a in NUMBERS for a in args)):
            found[f.name] = float if float in (hint, *args) or hint is tuple else int
    return found


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_numeric_setting_declares_its_range(cls):
    missing = [name for name in _numeric_fields(cls)
               if name not in cls.ranges and f"{cls.__name__}.{name}" not in RANGE_CHECKED_ELSEWHERE]
    assert not missing, f"{cls.__name__}: add {missing} to its ranges table"


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_a_value_just_outside_its_range_or_nan_is_one_error_naming_key_range_and_value(cls):
    kinds = _numeric_fields(cls)
    for name, spec in cls.ranges.items():
        interval = Interval(*spec) if isinstance(spec, tuple) else Interval(spec)
        low, high, low_in, high_in = interval.bounds()
        bad = (low - 1 if low_in else low) if math.isfinite(low) else (high + 1 if high_in else high)
        if not math.isfinite(bad):
            bad = float("nan")  # (-inf, inf): only non-finite values are outside
        bad = int(bad) if kinds[name] is int else float(bad)
        value = [bad, bad] if isinstance(getattr(cls(), name), (list, tuple)) else bad
        with pytest.raises(ConfigError) as err:
            dataclasses.replace(cls(), **{name: value})
        message = str(err.value)
        assert f"{name} must be " in message and interval.describe() in message and "\n" not in message
        assert message.endswith(f"got {value}"), message
        if kinds[name] is float and not isinstance(value, list):
            with pytest.raises(ConfigError, match=f"{name} must be .*got nan"):
                dataclasses.replace(cls(), **{name: float("nan")})


@pytest.mark.parametrize("schema, argv, fragment", [
    (EvalConfig, ["n_episodes=-1"], "n_episodes must be at least 1, got -1"),
    (EvalConfig, ["n_episodes=0"], "n_episodes must be at least 1, got 0"),
    (EvalConfig, ["beam_width=0"], "beam_width must be at least 1, got 0"),
    (EvalConfig, ["max_episode_steps=0"], "max_episode_steps must be at least 1, got 0"),
    (EvalConfig, ["cdf_act=0"], "cdf_act must be in (0, 1] (null: off), got 0.0"),
    (EvalConfig, ["discount=1.5"], "discount must be in [0, 1] (0: the immediate reward only), got 1.5"),
    (EvalConfig, ["beam_steps=0"], "beam_steps must be at least 1, got 0"),
    (EvalConfig, ["threads=-1"], "threads must be at least 0 (0: torch's default), got -1"),
    (TrainRunConfig, ["train.lr=-0.001"], "train.lr must be above 0, got -0.001"),
    (TrainRunConfig, ["train.lr=nan"], "train.lr must be above 0, got nan"),
    (TrainRunConfig, ["train.batch_size=0"], "train.batch_size must be at least 1, got 0"),
    (TrainRunConfig, ["data.seq_len=0"], "data.seq_len must be at least 1, got 0"),
    (TrainRunConfig, ["data.n_bins=300"], "data.n_bins must be in [2, 256] (tokens are uint8), got 300"),
    (TrainRunConfig, ["model.dropout=1.0"], "model.dropout must be in [0, 1), got 1.0"),
    (TrainRunConfig, ["data.discount=0"], "data.discount must be in (0, 1], got 0.0"),
    (TrainRunConfig, ["train.betas=[0.9]"], "train.betas must hold two numbers"),
    (TrainRunConfig, ["train.budget_minutes=-5"], "train.budget_minutes must be at least 0, got -5.0"),
    (TrainRunConfig, ["model.n_heads=3"], "model.d_model=128 must split into model.n_heads=3 heads"),
    (TrainRunConfig, ["model.core=retnet", "model.d_model=12", "model.n_heads=4"],
     "model.d_model=12 must split into model.n_heads=4 heads of even width for the retnet core"),
])
def test_settings_out_of_range_are_refused(schema, argv, fragment):
    with pytest.raises(ConfigError) as err:
        parse_cli(schema, argv)
    assert str(err.value).startswith(fragment)


def test_null_switches_a_filter_off():
    cfg = parse_cli(EvalConfig, ["cdf_act=null", "k_act=null"])
    assert cfg.cdf_act is None and cfg.k_act is None


def test_cores_without_heads_take_any_head_count():
    assert parse_cli(TrainRunConfig, ["model.core=s5", "model.n_heads=3"]).model.n_heads == 3
