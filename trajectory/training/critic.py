"""Train the action-value critic (:mod:`trajectory.models.critic`) of a trajectory-model run on the
same dataset, the same held-out episodes excluded, with the same discount.

    python train_critic.py run=runs/halfcheetah-medium-s5-cpu [steps=200000] [expectile=0.7]

It is written to ``<run>/critic/``: ``critic.pt`` (config and weights: what planners load),
``trainer.pt`` (optimizers, target network, step, RNG: what ``resume=true`` continues from),
``metrics.json``, and tensorboard scalars under ``tb/``. Every save is atomic. Held-out metrics,
on the run's held-out episodes: the TD error of Q, and how V(s) and Q(s, a) compare with the
discounted return that really followed (their correlation, and their mean offset: with an expectile
above 0.5 they sit above the behaviour policy's return by design).
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from trajectory.checkpoint_folder import CHECKPOINT_DIR, CRITIC_DIR, critic_folder
from trajectory.configutil import ConfigError
from trajectory.io import save_json, save_torch
from trajectory.models.critic import ActionValueCritic, iql_losses
from trajectory.run_lock import LOCK_FILE, folder_lock
from trajectory.training import critic_provenance
from trajectory.training.stop_signals import StopSignals

__all__ = ["CRITIC_DIR", "CriticRunConfig", "critic_folder", "train_critic"]
# what train_critic.py writes into its folder: overwrite=true removes these, and nothing else
CRITIC_OUTPUTS = ("critic.pt", "trainer.pt", "metrics.json", "tb")
TRAINER_STATE_KEYS = ("critic", "target", "q_optim", "v_optim", "generator", "step", "seconds")


@dataclass
class CriticRunConfig:
    """Root config of ``train_critic.py``."""

    run: str = ""  # the trajectory-model run (runs/<name>) whose dataset and discount the critic uses
    # a train.py config: the critic of the run it trains, before its model exists (a recipe that
    # weights action tokens by its own critic, train.advantage_beta); run= defaults to its folder
    recipe: str = ""
    out: str = ""  # where the critic goes ('': <run>/critic, where planner=critic looks)
    steps: int = 200_000  # gradient steps
    budget_minutes: float = 0.0  # stop earlier after this wall time (0: no limit)
    batch_size: int = 256
    lr: float = 3e-4
    hidden: int = 256
    members: int = 2  # Q networks; a candidate scores the minimum over them
    # of V over the data's actions (0.5: the behaviour policy's Q); null: the run's (or recipe's)
    # train.critic_expectile, 0.7 unless its recipe says otherwise
    expectile: Optional[float] = None
    target_rate: float = 0.005  # Polyak rate of the target Q networks
    seed: int = 0
    threads: int = 1  # torch CPU threads
    device: str = "cpu"
    log_every: int = 1000
    save_every: int = 10_000
    held_out_every: int = 20_000
    resume: bool = False  # continue <run>/critic/ from its trainer state
    overwrite: bool = False  # replace a finished or started critic

    def __post_init__(self) -> None:
        if self.expectile is not None and not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"expectile must be in (0, 1), got {self.expectile}")
        for name in ("steps", "batch_size", "hidden", "members", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.target_rate <= 1.0:
            raise ConfigError(f"target_rate must be in (0, 1], got {self.target_rate}")


@dataclass
class TransitionTensors:
    """Every usable transition (one whose next observation is known, or which ends the episode)."""

    obs: torch.Tensor  # [N, O]
    act: torch.Tensor  # [N, A]
    reward: torch.Tensor  # [N]
    next_obs: torch.Tensor  # [N, O] (the observation itself where the episode terminated)
    not_done: torch.Tensor  # [N] 0 at true terminals
    returns: torch.Tensor  # [N] discounted return that followed, within the episode

    def __len__(self) -> int:
        return len(self.reward)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"obs": self.obs[index], "act": self.act[index], "reward": self.reward[index],
                "next_obs": self.next_obs[index], "not_done": self.not_done[index]}


def transition_tensors(transitions, episodes: np.ndarray, discount: float,
                       terminal_penalty: float) -> TransitionTensors:
    """The transitions of ``episodes`` (indices into the dataset's episodes). The last step of an
    episode the time limit cut has no next observation and is left out; a true terminal keeps its
    penalty, as the trajectory model's rewards do."""
    from trajectory.data.dataset import value_to_go
    starts, lengths = transitions.episode_bounds()
    rewards = transitions.rewards.astype(np.float64) + terminal_penalty * transitions.terminals
    returns = rewards + discount * value_to_go(rewards, starts, lengths, discount)  # from this step on
    rows = np.concatenate([np.arange(starts[e], starts[e] + lengths[e]) for e in episodes]
                          ) if len(episodes) else np.zeros(0, dtype=np.int64)
    last = np.zeros(len(transitions), dtype=bool)
    last[starts + lengths - 1] = True
    rows = rows[~last[rows] | transitions.terminals[rows]]
    following = np.where(last[rows], rows, rows + 1)
    as_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # noqa: E731
    return TransitionTensors(as_tensor(transitions.observations[rows]), as_tensor(transitions.actions[rows]),
                             as_tensor(rewards[rows]), as_tensor(transitions.observations[following]),
                             as_tensor(~transitions.terminals[rows]), as_tensor(returns[rows]))


def _correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


@torch.no_grad()
def held_out_metrics(critic: ActionValueCritic, data: TransitionTensors, discount: float,
                     limit: int = 20_000) -> dict[str, float]:
    """TD error of Q, and Q / V against the discounted return that followed (first ``limit`` rows)."""
    if len(data) == 0:
        return {}
    b = data.batch(torch.arange(min(limit, len(data))))
    q, v = critic.q(b["obs"], b["act"]), critic.value(b["obs"])
    backup = b["reward"] + discount * b["not_done"] * critic.value(b["next_obs"])
    realised = data.returns[:len(q)]
    return {"td_rmse": float((q - backup).square().mean().sqrt()),
            "q_return_corr": _correlation(q, realised), "v_return_corr": _correlation(v, realised),
            "q_minus_return": float((q - realised).mean()), "v_minus_return": float((v - realised).mean())}


def check_run_folder(run_dir: str) -> None:
    """The run the critic belongs to must have a checkpoint (torch-free: checked at once)."""
    if not run_dir:
        raise ConfigError("give the trajectory-model run the critic belongs to: run=runs/<name>")
    if not os.path.isdir(os.path.join(run_dir, CHECKPOINT_DIR)):
        raise ConfigError(f"{run_dir} has no {CHECKPOINT_DIR}/: train the model first (python train.py "
                          f"...) or point run= at its folder")


def check_critic_folder(cfg: CriticRunConfig, out: str) -> None:
    """A started critic is continued or replaced only when asked (torch-free: checked at once)."""
    started = os.path.isdir(out) and any(name != LOCK_FILE for name in os.listdir(out))
    if started and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"{out} already exists: resume=true continues it, overwrite=true replaces it")
    if cfg.resume and not os.path.isfile(os.path.join(out, "trainer.pt")):
        raise ConfigError(f"nothing to resume: {os.path.join(out, 'trainer.pt')} is missing (start with "
                          f"overwrite=true)")


def _clear_outputs(out: str) -> None:
    """overwrite=true: the old critic's files go before the new one writes any (its logs would mix)."""
    for name in CRITIC_OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


def _trainer_state(path: str, run_dir: str) -> dict:
    """The saved trainer state (read before the data loads): one line when it is damaged."""
    from trajectory.loaders import load_torch_state
    return load_torch_state(path, critic_provenance.retrain_fix(run_dir), keys=TRAINER_STATE_KEYS)


def _restore(state: dict, path: str, cfg: CriticRunConfig, modules: dict) -> None:
    try:
        for name, module in modules.items():
            (module.set_state if isinstance(module, torch.Generator) else module.load_state_dict)(state[name])
    except (RuntimeError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} does not fit a critic of hidden={cfg.hidden} members={cfg.members} "
                          f"(was it started with other settings?): resume with the settings it started "
                          f"with, or {critic_provenance.retrain_fix(cfg.run)}") from None


def _load_run(run_dir: str):
    """The run's checkpoint, for its data settings and token layout."""
    from trajectory.checkpoint import load_checkpoint
    check_run_folder(run_dir)
    return load_checkpoint(run_dir)


@dataclass
class CriticData:
    """The run's transitions split as its model's were, and the record of what they are."""

    train: TransitionTensors
    held_out: TransitionTensors
    discount: float
    record: dict  # critic_provenance.provenance: saved with the critic


def read_recipe(cfg: CriticRunConfig):
    """``cfg.recipe``'s train.py config (``cfg.run`` set to the folder it trains where not given), or
    None without one; torch-free."""
    if not cfg.recipe:
        return None
    from trajectory.checkpoint_folder import train_run_dir
    from trajectory.config import TrainRunConfig
    from trajectory.configutil import build_config
    recipe = build_config(TrainRunConfig, cfg.recipe)
    cfg.run = cfg.run or train_run_dir(recipe, None)
    checkpoint_config = os.path.join(cfg.run, CHECKPOINT_DIR, "config.yaml")
    if os.path.isfile(checkpoint_config):  # a trained run: its saved data settings are the truth
        saved = critic_provenance.run_data_settings(cfg.run)
        differ = [k for k in critic_provenance.COMPARED if k in saved and saved[k] != getattr(recipe.data, k)]
        if differ:
            raise ConfigError(f"{cfg.run} was trained with other data settings ({', '.join(differ)}) than "
                              f"{cfg.recipe}: drop recipe= to train the run's own critic")
    return recipe


def _training_data(data_cfg, run_dir: str, layout=None) -> CriticData:
    """The transitions of ``data_cfg``'s dataset; ``layout``: the run's model's, checked against them."""
    from trajectory.data.dataset import held_out_episodes
    from trajectory.data.sources import check_source, load_transitions

    check_source(data_cfg.source, download=data_cfg.download, cache_dir=data_cfg.cache_dir)
    transitions = load_transitions(data_cfg.source, download=data_cfg.download, cache_dir=data_cfg.cache_dir)
    dims = (transitions.obs_dim, transitions.act_dim)
    if layout is not None and dims != (layout.obs_dim, layout.act_dim):
        raise ConfigError(f"{data_cfg.source} no longer matches {run_dir}'s model (obs/act dims)")
    _, lengths = transitions.episode_bounds()
    held = held_out_episodes(len(lengths), data_cfg.holdout_fraction)
    kept = np.setdiff1d(np.arange(len(lengths)), held)
    train_data = transition_tensors(transitions, kept, data_cfg.discount, data_cfg.terminal_penalty)
    held_data = transition_tensors(transitions, held, data_cfg.discount, data_cfg.terminal_penalty)
    if not np.isfinite(train_data.obs.numpy()).all() or not np.isfinite(train_data.reward.numpy()).all():
        raise ConfigError(f"{data_cfg.source} holds NaN or infinite observations or rewards")
    digest = critic_provenance.data_digest(*(t.numpy() for t in (
        train_data.obs, train_data.act, train_data.reward, train_data.next_obs, train_data.not_done)))
    record = critic_provenance.provenance(data_cfg, transitions.env_id, held.tolist(), digest)
    return CriticData(train_data, held_data, data_cfg.discount, record)


def train_critic(cfg: CriticRunConfig) -> dict:
    """Train (or continue) ``<cfg.run>/critic`` (or ``cfg.out``); returns the final metrics. The
    folder is locked while it is written (:mod:`trajectory.run_lock`): a second writer is refused,
    as is a damaged trainer state, before the data loads."""
    recipe = read_recipe(cfg)  # with recipe=: the run that recipe will train (run= set from it)
    if recipe is None:
        check_run_folder(cfg.run)
    out = cfg.out or critic_folder(cfg.run)
    with folder_lock(out, "train_critic.py"):
        check_critic_folder(cfg, out)
        state = _trainer_state(os.path.join(out, "trainer.pt"), cfg.run) if cfg.resume else None
        torch.set_num_threads(cfg.threads)
        if recipe is None:
            checkpoint = _load_run(cfg.run)
            data = _training_data(checkpoint.config.data, cfg.run, checkpoint.layout)
        else:
            data = _training_data(recipe.data, cfg.run)
        if cfg.expectile is None:  # the recipe's choice for its critic
            cfg.expectile = (recipe or checkpoint.config).train.critic_expectile
        if state is not None:
            critic_provenance.check_resumable(state.get("provenance", {}), data.record, out, cfg.run)
        elif cfg.overwrite:
            _clear_outputs(out)
        return _fit(cfg, out, data, state)


def _iql_step(critic: ActionValueCritic, target: ActionValueCritic, optimizers: tuple, batch: dict,
              discount: float, cfg: CriticRunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of V, then Q, then the target Q networks; returns (value loss, Q loss)."""
    v_optim, q_optim = optimizers
    value_loss, q_loss = iql_losses(critic, target, batch, discount, cfg.expectile)
    v_optim.zero_grad(set_to_none=True)
    value_loss.backward()
    v_optim.step()
    q_optim.zero_grad(set_to_none=True)
    q_loss.backward()
    q_optim.step()
    with torch.no_grad():
        for p, t in zip(critic.q_net.parameters(), target.q_net.parameters()):
            t.lerp_(p, cfg.target_rate)
    return value_loss, q_loss


def _fit(cfg: CriticRunConfig, out: str, data: CriticData, state: dict | None) -> dict:
    from trajectory.training.monitor import TrainLogger

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    train_data, held_data, discount = data.train, data.held_out, data.discount
    critic = ActionValueCritic(train_data.obs.shape[1], train_data.act.shape[1], cfg.hidden, cfg.members)
    critic.set_normalization(train_data.obs, train_data.returns)
    critic.to(device)
    target = copy.deepcopy(critic).requires_grad_(False)
    q_optim = torch.optim.Adam(critic.q_net.parameters(), lr=cfg.lr)
    v_optim = torch.optim.Adam(critic.v_net.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, seconds_before = 0, 0.0
    trainer_path = os.path.join(out, "trainer.pt")
    if state is not None:
        _restore(state, trainer_path, cfg, {"critic": critic, "target": target, "q_optim": q_optim,
                                            "v_optim": v_optim, "generator": generator})
        step, seconds_before = state["step"], state["seconds"]

    logger = TrainLogger(out, True, cfg.steps, step, cfg.budget_minutes, seconds_before / 60)
    start = time.time()
    metrics: dict = {}

    def save(reason: str) -> None:
        seconds = seconds_before + time.time() - start
        metrics.update(step=step, seconds=round(seconds, 1), stop_reason=reason, expectile=cfg.expectile,
                       discount=discount, source=data.record["source"], provenance=data.record)
        save_torch({"critic": critic.state_dict(), "target": target.state_dict(),
                    "q_optim": q_optim.state_dict(), "v_optim": v_optim.state_dict(),
                    "generator": generator.get_state(), "step": step, "seconds": seconds,
                    "provenance": data.record}, trainer_path)
        save_torch({"config": critic.config(), "state_dict": critic.state_dict(), "discount": discount,
                    "expectile": cfg.expectile, "step": step, "provenance": data.record},
                   os.path.join(out, "critic.pt"))
        save_json(metrics, os.path.join(out, "metrics.json"))

    reason = "steps"
    try:
        with StopSignals() as stop:
            while step < cfg.steps:
                index = torch.randint(len(train_data), (cfg.batch_size,), generator=generator)
                batch = {k: v.to(device) for k, v in train_data.batch(index).items()}
                value_loss, q_loss = _iql_step(critic, target, (v_optim, q_optim), batch, discount, cfg)
                step += 1
                minutes = (seconds_before + time.time() - start) / 60
                if step % cfg.log_every == 0:
                    if not (torch.isfinite(value_loss) and torch.isfinite(q_loss)):
                        raise FloatingPointError(f"critic losses became non-finite at step {step}; lower lr")
                    losses = {"value_loss": value_loss.item(), "q_loss": q_loss.item()}
                    metrics.update(losses)
                    logger.log_scalars(step, losses, prefix="critic")
                    logger.postfix(q_loss=f"{losses['q_loss']:.3f}", v_loss=f"{losses['value_loss']:.3f}")
                if cfg.held_out_every and step % cfg.held_out_every == 0:
                    metrics["held_out"] = held_out_metrics(critic.cpu(), held_data, discount)
                    critic.to(device)
                    logger.log_scalars(step, metrics["held_out"], prefix="held_out")
                logger.advance(step, q_loss, minutes)
                if step % cfg.save_every == 0:
                    save("running")
                if cfg.budget_minutes and minutes >= cfg.budget_minutes:
                    reason = "budget"
                    break
                if stop.received:
                    reason = "signal"
                    metrics["signal"] = stop.received
                    break
        metrics["held_out"] = held_out_metrics(critic.cpu(), held_data, discount)
        save(reason)
    finally:
        logger.close()
    return metrics
