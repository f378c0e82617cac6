import glob
import os

import pytest
from omegaconf import OmegaConf

from trajectory.config import EvalConfig, TrainRunConfig
from trajectory.configutil import ConfigError, build_config, parse_cli, split_argv, to_dict

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
    assert EvalConfig().planner == "critic"  # the planner of the README's headline


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
