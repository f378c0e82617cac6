"""Structured configs of the package: one dataclass per component, composed into the CLIs' roots.

Defaults follow the Trajectory Transformer (Janner et al., 2021) for halfcheetah-medium. YAML files
under ``configs/`` override them, and the command line overrides both (see
:mod:`trajectory.configutil`). Unknown keys and wrong types are errors at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from trajectory.configutil import ConfigError, Ranges, check_ranges
from trajectory.retired import RETIRED_EVAL_KEYS, RETIRED_TRAIN_KEYS


@dataclass
class DataConfig:
    source: str = "halfcheetah-medium"  # Minari id, D4RL-layout .hdf5 path, or the local reproduction
    download: bool = False  # allow Minari to download a missing dataset (needs network)
    cache_dir: str = "data"  # generated datasets and token caches live here
    seq_len: int = 10  # transitions per training window
    n_bins: int = 100  # discretization bins per dimension
    strategy: str = "quantile"  # uniform | quantile
    discount: float = 0.99  # for value-to-go targets
    terminal_penalty: float = -100.0  # reward added on true terminals (not on timeouts)
    bootstrap_timeouts: bool = False  # value-to-go past a time limit: the episode's mean reward
    packed: bool = False  # windows across episode boundaries with reset flags instead of padding
    holdout_fraction: float = 0.02  # whole episodes kept out of training for held-out metrics
    env_id: str = ""  # env of an HDF5 source that names none ('': its env_id attribute or file name)

    ranges: ClassVar[Ranges] = {"seq_len": "[1, inf)", "n_bins": ("[2, 256]", "tokens are uint8"),
                                "discount": "(0, 1]", "terminal_penalty": "(-inf, inf)",
                                "holdout_fraction": "[0, 1)"}

    def __post_init__(self) -> None:
        if self.strategy not in ("uniform", "quantile"):
            raise ConfigError(f"data.strategy must be 'uniform' or 'quantile', got '{self.strategy}'")
        check_ranges(self, "data")


# cores that split d_model into n_heads heads -> the multiple each head's width must be (RetNet
# rotates pairs of features); the other cores ignore n_heads
HEAD_WIDTH_MULTIPLE = {"gpt": 1, "retnet": 2}


def check_heads(d_model: int, n_heads: int, core: str, section: str = "model") -> None:
    multiple = HEAD_WIDTH_MULTIPLE.get(core)
    if multiple and (d_model % n_heads or (d_model // n_heads) % multiple):
        width = "even" if multiple == 2 else "whole"
        raise ConfigError(f"{section}.d_model={d_model} must split into {section}.n_heads={n_heads} heads "
                          f"of {width} width for the {core} core; change d_model or n_heads")


def check_betas(betas: tuple, section: str = "train") -> None:
    """Adam's two decay rates (each in [0, 1): the table's range checks that)."""
    if len(betas) != 2:
        raise ConfigError(f"{section}.betas must hold two numbers (Adam's decay rates), got {list(betas)}")


@dataclass
class ModelConfig:
    core: str = "gpt"  # gpt | hyena | retnet | s5 (see trajectory.models.cores.CORES)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.1  # residual/attention dropout inside the core
    embedding_dropout: float = 0.1
    core_options: Dict[str, Any] = field(default_factory=dict)  # the core's own Options
    action_weight: float = 5.0  # loss weight of action tokens (TT)
    reward_weight: float = 1.0
    value_weight: float = 1.0

    ranges: ClassVar[Ranges] = {"d_model": "[1, inf)", "n_layers": "[1, inf)", "n_heads": "[1, inf)",
                                "dropout": "[0, 1)", "embedding_dropout": "[0, 1)",
                                "action_weight": "[0, inf)", "reward_weight": "[0, inf)",
                                "value_weight": "[0, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self, "model")
        check_heads(self.d_model, self.n_heads, self.core)


@dataclass
class TrainConfig:
    batch_size: int = 256  # global batch (split across DDP ranks)
    lr: float = 6e-4
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.1  # not applied to norms, embeddings, biases
    grad_clip: float = 1.0
    warmup_tokens: int = 0  # 0: 2% of the decay horizon
    decay_tokens: int = 0  # cosine decay horizon in tokens; 0: the whole run (max_tokens or epochs)
    min_lr_ratio: float = 0.1
    epochs: int = 50
    max_tokens: int = 0  # stop after this many tokens (0: no limit)
    budget_minutes: float = 0.0  # stop after this wall time (0: no limit)
    log_every: int = 50  # steps
    held_out_every: int = 1000  # steps between held-out metrics (0: only at the end)
    save_every: int = 1000  # steps
    bf16: bool = True  # autocast to bf16 on CUDA
    compile: bool = False  # torch.compile the model
    # advantage-weighted action tokens (trajectory/training/advantage_weights.py): 0 off; beta > 0
    # weights each action token's loss by exp(beta A / std A) under the critic named here
    advantage_beta: float = 0.0
    # a critic.pt trained on this data ('': the run's own, <run>/critic/critic.pt, trained before the
    # model by `train_critic.py recipe=<this config>`)
    advantage_critic: str = ""
    advantage_max_weight: float = 20.0
    # the expectile of the run's critic, as `train_critic.py` trains it unless told otherwise (0.5 on
    # hopper: 0.7's optimism valued the actions that fall; docs/results.md)
    critic_expectile: float = 0.7

    ranges: ClassVar[Ranges] = {"batch_size": "[1, inf)", "lr": "(0, inf)", "betas": "[0, 1)",
                                "weight_decay": "[0, inf)", "grad_clip": "(0, inf]",
                                "warmup_tokens": "[0, inf)", "decay_tokens": "[0, inf)",
                                "min_lr_ratio": "[0, 1]", "epochs": "[1, inf)", "max_tokens": "[0, inf)",
                                "budget_minutes": "[0, inf)", "log_every": "[1, inf)",
                                "held_out_every": "[0, inf)", "save_every": "[0, inf)",
                                "advantage_beta": ("[0, inf)", "0: off"), "advantage_max_weight": "[1, inf)",
                                "critic_expectile": "(0, 1)"}

    def __post_init__(self) -> None:
        check_ranges(self, "train")
        check_betas(self.betas)


@dataclass
class TrainRunConfig:
    """Root config of ``train.py``."""

    retired_keys: ClassVar[tuple[str, ...]] = RETIRED_TRAIN_KEYS  # saved configs with them still load

    name: str = ""  # run name; runs/<name>/ (default: <dataset>-<core>)
    runs_dir: str = "runs"
    overwrite: bool = False  # replace an existing run of the same name (else: refuse; --resume it)
    device: str = "cpu"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # how this recipe's runs plan best, as measured (eval.py planner=recipe, the default): eval.py
    # settings among PLANNING_KEYS, e.g. {planner: beam, plan_value: critic, beam_steps: 3}
    planning: Dict[str, Any] = field(default_factory=dict)

    ranges: ClassVar[Ranges] = {"seed": "[0, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self)
        check_planning(self.planning, "planning")


# the eval.py settings a recipe's ``planning`` may fix: how to plan, never where or how long
PLANNING_KEYS = ("planner", "critic_std_weight", "policy_actions", "beam_width", "beam_steps",
                 "beam_context", "sample_expand", "plan_value", "k_obs", "k_act", "cdf_obs", "cdf_act",
                 "average_actions", "discount", "plan_every")


def check_planning(planning: dict, origin: str) -> None:
    """A recipe's planning block: known keys, values eval.py accepts (types, ranges), a concrete
    planner; else one ConfigError naming the key."""
    unknown = sorted(set(planning) - set(PLANNING_KEYS))
    if unknown:
        raise ConfigError(f"{origin}.{unknown[0]} is not a planning setting; a recipe's planning "
                          f"takes: {', '.join(PLANNING_KEYS)}")
    if planning.get("planner") == "recipe":
        raise ConfigError(f"{origin}.planner names the planner itself (critic, beam or policy), "
                          f"not 'recipe'")
    from trajectory.configutil import from_dict
    from_dict(EvalConfig, dict(planning), f"{origin} (the recipe's planning)")


# how planner=policy picks each action token: the most likely one, the distribution's median, or a draw
POLICY_ACTIONS = ("greedy", "median", "sample")
# what values the end of a beam's plan: the model's value token (TT) or the run's critic
PLAN_VALUES = ("model", "critic")
# GPT's planning attention: the fused CPU kernel where it builds (auto), torch's ops, or the kernel
# or an error (trajectory/models/ops/decode_attention.py)
ATTENTION_KERNELS = ("auto", "torch", "fused")


@dataclass
class EvalConfig:
    """Root config of ``eval.py`` and ``profile.py`` (flat keys, as in the TT projects).

    ``configs/eval_base.yaml`` lists every key with these defaults. ``planner=recipe`` plans as the
    run's recipe says (its ``planning``, the settings measured best for that recipe: the README's
    headline); a run whose recipe says nothing plans with the critic planner."""

    retired_keys: ClassVar[tuple[str, ...]] = RETIRED_EVAL_KEYS  # saved configs with them still load

    checkpoints_path: Optional[str] = None  # a run directory (runs/<name>) or its checkpoint folder
    device: str = "cpu"
    seed: int = 42
    env_id: str = ""  # '': the env of the checkpoint's dataset; another one is refused
    n_episodes: int = 25  # run in parallel, planned in one batch
    max_episode_steps: int = 1000
    # recipe (the run's own planning settings; keys given on the command line still win) | critic |
    # beam | policy (no search) (planners.PLANNER_CATALOG)
    planner: str = "recipe"
    critic: str = ""  # planner=critic: the critic.pt ('': <run>/critic/critic.pt)
    # how the critic's Q members are combined: 0, their minimum (IQL); k > 0, their mean less k
    # standard deviations (pessimism where the ensemble disagrees; train_critic.py members=10)
    critic_std_weight: float = 0.0
    policy_actions: str = "median"  # planner=policy: median (of each token's bins) | greedy | sample
    beam_width: int = 32  # beam: beams kept per env; critic: candidate actions per env
    beam_steps: int = 5  # planning horizon in transitions (beam)
    beam_context: int = 5  # transitions of history fed to the model
    sample_expand: int = 2  # beam: copies of every beam per planned transition
    # beam: what values a plan's end: model (TT: the value token) | critic (the run's critic: the
    # discounted predicted rewards before the last planned action, then Q of that action)
    plan_value: str = "model"
    k_obs: int = 1  # observation tokens: greedy
    k_act: Optional[int] = None  # top-k filter on action tokens (None: off)
    cdf_obs: Optional[float] = None
    cdf_act: Optional[float] = 0.6  # drop the unlikely tail holding this mass (null: off)
    # 0: act on the best beam's first action (TT); t > 0: on the kept beams' first actions averaged
    # with weights softmax(score / (t x the std of the env's beam scores))
    average_actions: float = 0.0
    discount: float = 0.99
    plan_every: int = 1  # re-plan every N env steps, reusing the plan in between
    # none | dynamic | static | compiled (torchao int8 in the compiled step) | auto (int8 where this
    # CPU and core gain from it)
    quantize: str = "none"
    calibration_batches: int = 8  # static quantization
    compile_step: bool = False  # torch.compile the one-token step (planning only; first plans slower)
    attention_kernel: str = "auto"  # GPT's planning attention: auto | torch | fused (see ATTENTION_KERNELS)
    render: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    out: str = ""  # where the report goes (default: <run>/eval)
    compare: str = ""  # profile.py: comma-separated cores to profile side by side
    profile_steps: int = 5  # profile.py: planning steps timed after warm-up (then one profiled)

    ranges: ClassVar[Ranges] = {
        "seed": "[0, inf)", "n_episodes": "[1, inf)", "max_episode_steps": "[1, inf)",
        "critic_std_weight": ("[0, inf)", "0: the minimum over the Q members"),
        "beam_width": "[1, inf)", "beam_steps": "[1, inf)", "beam_context": "[0, inf)",
        "sample_expand": "[1, inf)", "k_obs": "[1, inf)", "k_act": ("[1, inf)", "null: off"),
        "cdf_obs": ("(0, 1]", "null: off"), "cdf_act": ("(0, 1]", "null: off"),
        "average_actions": ("[0, inf)", "0: the best beam"),
        "discount": ("[0, 1]", "0: the immediate reward only"), "plan_every": "[1, inf)",
        "calibration_batches": "[1, inf)", "threads": ("[0, inf)", "0: torch's default"),
        "profile_steps": "[1, inf)"}

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.policy_actions not in POLICY_ACTIONS:
            raise ConfigError(f"policy_actions must be one of {', '.join(POLICY_ACTIONS)}, got "
                              f"'{self.policy_actions}'")
        if self.plan_value not in PLAN_VALUES:
            raise ConfigError(f"plan_value must be one of {', '.join(PLAN_VALUES)}, got "
                              f"'{self.plan_value}'")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, got "
                              f"'{self.attention_kernel}'")
        if self.compile_step and self.quantize in ("dynamic", "static"):
            raise ConfigError("compile_step=true does not combine with quantize=dynamic or static (their "
                              "int8 modules are not compiled); quantize=compiled compiles int8 steps")
        modes = ("none", "dynamic", "static", "compiled", "auto")
        for mode in self.quantize.split(","):
            if mode.strip() not in modes:
                raise ConfigError(f"quantize must be one of {', '.join(modes)} (profile.py takes a "
                                  f"comma-separated list), got '{self.quantize}'")
        if "compiled" in (mode.strip() for mode in self.quantize.split(",")):
            from trajectory.quantize_compiled import check_available
            check_available()
