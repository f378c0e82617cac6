import os

import numpy as np
import pytest
import torch

from planners.beam import (
    BeamPlanner,
    ContextSharingModel,
    PlainStateModel,
    RecomputingModel,
    max_context_transitions,
)
from planners.rollout import check_env_matches, rollout
from planners.sampling import filter_cdf, sample
from trajectory.checkpoint import CheckpointError, load_checkpoint
from trajectory.config import EvalConfig, ModelConfig
from trajectory.configutil import ConfigError
from trajectory.data.discretizer import Discretizer
from trajectory.envs import make_env
from trajectory.models.cores import CORES
from trajectory.models.trajectory_model import TokenLayout, TrajectoryModel

SMALL = TokenLayout(obs_dim=3, act_dim=2, vocab=12, seq_len=6)


def fitted_discretizer(layout: TokenLayout, low=-1.0, high=1.0, seed=0) -> Discretizer:
    rows = np.random.default_rng(seed).uniform(low, high, size=(500, layout.transition_dim))
    return Discretizer(n_bins=layout.vocab, strategy="uniform").fit(rows)


def save_tiny_run(run, layout: TokenLayout, metrics: dict | None = None, low=-1.0, high=1.0) -> str:
    """A tiny random S5 model and a discretizer fitted on uniform rows, saved as the run ``run``."""
    from trajectory.checkpoint import save_checkpoint
    from trajectory.config import TrainRunConfig
    cfg = TrainRunConfig(name="tiny")
    cfg.model.core, cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = "s5", 16, 2, 2
    cfg.data.seq_len, cfg.data.n_bins = layout.seq_len, layout.vocab
    torch.manual_seed(0)
    save_checkpoint(os.path.join(str(run), "checkpoint"), cfg, TrajectoryModel(cfg.model, layout),
                    fitted_discretizer(layout, low, high), None, metrics or {})
    return str(run)


def tiny_model(core: str, layout: TokenLayout) -> TrajectoryModel:
    torch.manual_seed(0)
    cfg = ModelConfig(core=core, d_model=16, n_layers=2, n_heads=2, dropout=0.0, embedding_dropout=0.0)
    return TrajectoryModel(cfg, layout).eval()


def eval_cfg(**overrides) -> EvalConfig:
    base = dict(planner="beam", beam_width=4, sample_expand=2, beam_steps=2, beam_context=2,
                cdf_act=0.3, env_id="HalfCheetah-v5")
    return EvalConfig(**{**base, **overrides})


def recorded_plan(planner, context, monkeypatch):
    """``planner.plan(context)`` with every token draw recorded: (logits [R, V], tokens [R], the
    generator's state before the draw, top_k, cdf)."""
    import planners.beam as beam
    draws, draw = [], beam.sample

    def recording(logits, generator, top_k=None, cdf=None):
        state = generator.get_state().clone() if generator is not None else None
        tokens = draw(logits, generator, top_k, cdf)
        draws.append((logits.detach().clone(), tokens.clone(), state, top_k, cdf))
        return tokens
    monkeypatch.setattr(beam, "sample", recording)
    plan = planner.plan(context)
    monkeypatch.setattr(beam, "sample", draw)
    return plan, draws


def near_tie(logits, ref_logits, state, top_k, cdf, rows, atol) -> bool:
    """Whether the draws of ``rows`` sat within ``atol`` of a boundary between two tokens, in
    either run: for a greedy draw, its two most likely tokens; for a draw by inverse CDF, the
    uniform number (replayed from the generator's state) against the running sums."""
    from planners.sampling import kept_cumulative
    if top_k == 1:
        gaps = [x[rows].float().topk(2, dim=-1).values for x in (logits, ref_logits)]
        return all(bool(((g[:, 0] - g[:, 1]) < atol).all()) for g in gaps)
    generator = torch.Generator().set_state(state)
    u = torch.rand(logits.shape[0], 1, generator=generator)[rows]
    for x in (logits, ref_logits):
        cumulative = kept_cumulative(x[rows], top_k, cdf)
        if not bool(((cumulative - u * cumulative[:, -1:]).abs().min(dim=-1).values < atol).all()):
            return False
    return True


def assert_same_draws_up_to_rounding(plan, draws, reference_plan, reference_draws, atol=1e-4):
    """Two numerically different paths to one plan (a cache against re-running, a kernel against
    torch's ops) draw the same tokens from the same seed while what they draw from agrees. Their
    logits differ in the last bits, so a draw that lands within that much of a boundary between
    two tokens may go either way on some CPU: a plan may part from the reference at such a near
    tie, and only there, after which nothing more is compared. Any other difference is a bug."""
    for (logits, tokens, state, top_k, cdf), (ref_logits, ref_tokens, *_) in zip(draws, reference_draws):
        torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0)
        differ = (tokens != ref_tokens).nonzero().flatten()
        if len(differ):
            assert near_tie(logits, ref_logits, state, top_k, cdf, differ, atol), \
                "the plans part at a draw that is not a near tie"
            return  # resolved differently on this CPU: the plans may differ from here on
    assert len(draws) == len(reference_draws)
    assert torch.equal(plan.actions, reference_plan.actions)
    torch.testing.assert_close(plan.score, reference_plan.score, atol=atol, rtol=0)


@pytest.mark.parametrize("core", sorted(CORES))
def test_cached_planning_equals_recomputing_planning(core, monkeypatch):
    """Same seed, same actions: the step form's caches reproduce the parallel form."""
    model, disc = tiny_model(core, SMALL), fitted_discretizer(SMALL)
    cfg = eval_cfg()
    n_ctx = max_context_transitions(SMALL, cfg.beam_steps)
    context = torch.randint(0, SMALL.vocab, (3, min(cfg.beam_context, n_ctx) * SMALL.transition_dim
                                             + SMALL.obs_dim))
    # shared context and beams; per-row re-running; the references the benchmark times beside them
    adapters = (model, RecomputingModel(model), PlainStateModel(model), ContextSharingModel(model))
    runs = [recorded_plan(BeamPlanner(adapter, disc, SMALL, cfg, torch.Generator().manual_seed(5)),
                          context, monkeypatch) for adapter in adapters]
    (cached, cached_draws), *references = runs
    for reference, reference_draws in references:
        assert_same_draws_up_to_rounding(cached, cached_draws, reference, reference_draws)
    assert cached.actions.shape == (3, cfg.beam_steps, SMALL.act_dim)


def test_a_plan_that_parts_from_its_reference_without_a_near_tie_is_caught(monkeypatch):
    model, disc = tiny_model("s5", SMALL), fitted_discretizer(SMALL)
    context = torch.randint(0, SMALL.vocab, (3, SMALL.transition_dim + SMALL.obs_dim))
    plan, draws = recorded_plan(BeamPlanner(model, disc, SMALL, eval_cfg(), torch.Generator().manual_seed(5)),
                                context, monkeypatch)
    other, other_draws = recorded_plan(BeamPlanner(model, disc, SMALL, eval_cfg(),
                                                   torch.Generator().manual_seed(6)), context, monkeypatch)
    assert_same_draws_up_to_rounding(plan, draws, plan, draws)
    with pytest.raises(AssertionError, match="not a near tie"):  # another seed: other draws
        assert_same_draws_up_to_rounding(plan, draws, other, other_draws)
    # a draw replayed with its logits moved across the boundary it sat next to is a near tie
    logits, tokens, state, top_k, cdf = draws[0]
    from planners.sampling import kept_cumulative
    u = torch.rand(logits.shape[0], 1, generator=torch.Generator().set_state(state))
    cumulative = kept_cumulative(logits, top_k, cdf)
    assert not near_tie(logits, logits, state, top_k, cdf, torch.tensor([0]), atol=1e-9)
    assert near_tie(logits, logits, state, top_k, cdf, torch.tensor([0]),
                    atol=float((cumulative[0] - u[0] * cumulative[0, -1]).abs().min()) + 1e-7)


def test_gpt_plans_the_same_with_the_fused_attention_kernel_and_with_torch(monkeypatch):
    from trajectory.models.ops import decode_attention
    if decode_attention.load() is None:
        pytest.skip(f"the kernel cannot be built here: {decode_attention.unavailable_reason()}")
    model, disc = tiny_model("gpt", SMALL), fitted_discretizer(SMALL)
    cfg = eval_cfg()
    context = torch.randint(0, SMALL.vocab, (3, SMALL.transition_dim + SMALL.obs_dim))
    runs, used = [], []
    for kernel in ("fused", "torch"):
        with decode_attention.kernel_mode(kernel):
            before = decode_attention.calls()
            runs.append(recorded_plan(BeamPlanner(model, disc, SMALL, cfg, torch.Generator().manual_seed(5)),
                                      context, monkeypatch))
            used.append(decode_attention.calls() - before)
    assert used[0] > 0 and used[1] == 0  # every decoded token's attention, then none
    assert_same_draws_up_to_rounding(*runs[0], *runs[1])


class RewardOracle:
    """A hand-built model: action tokens uniform; the reward and value of a transition depend on its
    first action token through known tables; observations predicted as token 0."""

    def __init__(self, layout: TokenLayout, reward_token: dict, value_token: dict, default: tuple):
        self.layout, self.reward_token, self.value_token = layout, reward_token, value_token
        self.default = default

    def init_state(self, batch, device, dtype=torch.float32):
        return torch.zeros(batch, 0, dtype=torch.long)

    def select_state(self, state, index):
        return state.index_select(0, index)

    def step(self, tokens, state):
        seq = torch.cat([state, tokens.long()], 1)
        lay, vocab = self.layout, self.layout.vocab
        logits = torch.zeros(seq.shape[0], tokens.shape[1], vocab)
        for j, p in enumerate(range(state.shape[1], seq.shape[1])):
            next_dim = (p + 1) % lay.transition_dim
            first_action = seq[:, p - lay.act_dim + 1] if next_dim == lay.obs_dim + lay.act_dim else \
                seq[:, p - lay.act_dim] if next_dim == lay.obs_dim + lay.act_dim + 1 else None
            if first_action is None:
                if next_dim < lay.obs_dim:
                    logits[:, j, 0] = 50.0
                continue
            table = self.reward_token if next_dim == lay.obs_dim + lay.act_dim else self.value_token
            fallback = self.default[0 if table is self.reward_token else 1]
            for r, act in enumerate(first_action.tolist()):
                logits[r, j, table.get(act, fallback)] = 50.0
        return logits, seq


def test_planner_picks_the_action_with_the_best_return_estimate():
    layout = TokenLayout(obs_dim=2, act_dim=2, vocab=8, seq_len=6)
    disc = fitted_discretizer(layout, low=-10, high=10)
    r_dim, v_dim = layout.obs_dim + layout.act_dim, layout.obs_dim + layout.act_dim + 1
    tok = lambda value, dim: int(disc.encode(np.array([value]), dims=dim)[0])  # noqa: E731
    # action 5: immediate reward +9 but value -9; action 2: reward 0 and value +9 (the best);
    # every other action: reward 0, value 0.
    oracle = RewardOracle(layout, reward_token={5: tok(9, r_dim)},
                          value_token={5: tok(-9, v_dim), 2: tok(9, v_dim)},
                          default=(tok(0, r_dim), tok(0, v_dim)))
    cfg = eval_cfg(beam_width=8, sample_expand=4, beam_steps=1, cdf_act=None)
    planner = BeamPlanner(oracle, disc, layout, cfg, torch.Generator().manual_seed(0))
    plan = planner.plan(torch.zeros(4, layout.obs_dim, dtype=torch.long))
    assert plan.actions[:, 0, 0].tolist() == [2, 2, 2, 2]
    # and with the value ignored (discount 0) the immediate reward wins
    cfg = eval_cfg(beam_width=8, sample_expand=4, beam_steps=1, cdf_act=None, discount=0.0)
    planner = BeamPlanner(oracle, disc, layout, cfg, torch.Generator().manual_seed(0))
    assert planner.plan(torch.zeros(4, layout.obs_dim, dtype=torch.long)).actions[:, 0, 0].tolist() == [5] * 4


def test_cdf_filter_keeps_the_likely_head():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_cdf(logits, 0.6))
    assert kept.tolist() == [[True, False, False, False]]  # the tail 0.05+0.15+0.3 = 0.5 < 0.6
    kept = torch.isfinite(filter_cdf(logits, 0.1))
    assert kept.tolist() == [[True, True, True, False]]
    draws = torch.stack([sample(logits, torch.Generator().manual_seed(s), cdf=0.6) for s in range(20)])
    assert (draws == 0).all()


def test_rollout_actions_stay_in_the_action_space(monkeypatch):
    import gymnasium as gym

    import planners.rollout as rollout_module

    recorded = []

    class Recorder(gym.Wrapper):
        def step(self, action):
            recorded.append((self.action_space.contains(np.asarray(action, dtype=np.float32)), action))
            return self.env.step(action)

    monkeypatch.setattr(rollout_module, "make_env", lambda *a, **k: Recorder(make_env(*a, **k)))
    layout = TokenLayout(obs_dim=17, act_dim=6, vocab=10, seq_len=4)
    disc = fitted_discretizer(layout, low=-1.0, high=1.0)
    cfg = eval_cfg(n_episodes=2, max_episode_steps=4, beam_steps=1, beam_context=1)
    result = rollout(tiny_model("s5", layout), disc, layout, cfg, torch.device("cpu"), progress=False)
    assert result["lengths"].tolist() == [4, 4]
    assert len(recorded) == 8 and all(ok for ok, _ in recorded)
    assert len({tuple(np.round(a, 6)) for _, a in recorded}) > 1  # the planner did choose


def test_mismatched_env_and_missing_checkpoint_are_clear_errors(tmp_path):
    env = make_env("HalfCheetah-v5")
    with pytest.raises(ValueError, match="trained on 3 and 2"):
        check_env_matches(env, SMALL, "HalfCheetah-v5", "runs/x")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "missing"))


def test_window_too_short_for_the_plan_is_a_clear_error():
    with pytest.raises(ValueError, match="beam_steps"):
        max_context_transitions(TokenLayout(obs_dim=3, act_dim=2, vocab=8, seq_len=2), beam_steps=5)


def test_render_records_an_animation_of_the_first_episode(tmp_path):
    from planners.report import save_animation
    layout = TokenLayout(obs_dim=17, act_dim=6, vocab=10, seq_len=4)
    cfg = eval_cfg(n_episodes=2, max_episode_steps=4, beam_steps=1, beam_context=1, render=True)
    try:
        result = rollout(tiny_model("s5", layout), fitted_discretizer(layout), layout, cfg,
                         torch.device("cpu"), progress=False)
    except Exception as err:  # a machine without any OpenGL backend
        pytest.skip(f"no MuJoCo renderer here: {err}")
    assert len(result["frames"]) == 2  # every other step of episode 0
    assert result["frames"][0].ndim == 3 and result["frames"][0].shape[2] == 3
    path = save_animation(result["frames"], str(tmp_path / "episode0.gif"))
    assert (tmp_path / "episode0.gif").stat().st_size > 0 and path.endswith(".gif")


def test_eval_takes_the_env_from_the_checkpoint_and_refuses_another():
    from types import SimpleNamespace

    from planners.rollout import resolve_env_id
    from trajectory.configutil import ConfigError
    checkpoint = SimpleNamespace(path="runs/x", metrics={"data": {"env_id": "HalfCheetah-v5"}})
    assert resolve_env_id(eval_cfg(env_id=""), checkpoint) == "HalfCheetah-v5"
    assert resolve_env_id(eval_cfg(env_id="HalfCheetah-v5"), checkpoint) == "HalfCheetah-v5"
    with pytest.raises(ConfigError, match="Walker2d-v5, but runs/x was trained on HalfCheetah-v5"):
        resolve_env_id(eval_cfg(env_id="Walker2d-v5"), checkpoint)
    with pytest.raises(ConfigError, match="does not record its environment"):
        resolve_env_id(eval_cfg(env_id=""), SimpleNamespace(path="runs/y", metrics={}))


def test_non_finite_observations_stop_the_evaluation_with_the_episode_and_step():
    from planners.rollout import check_finite
    from trajectory.configutil import ConfigError
    check_finite(np.zeros((2, 3)), np.array([0, 4]), 7, "HalfCheetah-v5")
    obs = np.zeros((2, 3))
    obs[1, 2] = np.nan
    with pytest.raises(ConfigError, match="episode 4 at step 7"):
        check_finite(obs, np.array([0, 4]), 7, "HalfCheetah-v5")


@pytest.mark.parametrize("planner", ["policy", "beam"])
def test_the_agent_acts_as_the_rollout_does(monkeypatch, planner):
    import gymnasium as gym

    import planners.rollout as rollout_module
    from planners.agent import Agent

    recorded = []

    class Recorder(gym.Wrapper):
        def step(self, action):
            recorded.append(np.asarray(action, dtype=np.float32).copy())
            return self.env.step(action)

    monkeypatch.setattr(rollout_module, "make_env", lambda *a, **k: Recorder(make_env(*a, **k)))
    layout = TokenLayout(obs_dim=17, act_dim=6, vocab=10, seq_len=4)
    disc, model = fitted_discretizer(layout), tiny_model("s5", layout)
    cfg = eval_cfg(n_episodes=2, max_episode_steps=4, beam_steps=1, beam_context=2, planner=planner,
                   seed=11)
    rollout(model, disc, layout, cfg, torch.device("cpu"), progress=False)
    expected = np.stack(recorded).reshape(4, 2, 6)  # steps x envs
    agent = Agent(model, disc, layout, cfg)
    envs = [make_env("HalfCheetah-v5") for _ in range(2)]
    obs = np.stack([env.reset(seed=cfg.seed + i)[0] for i, env in enumerate(envs)])
    agent.reset(envs=2)
    for t in range(4):
        actions = agent.act(obs)
        np.testing.assert_array_equal(actions, expected[t])
        steps = [env.step(a) for env, a in zip(envs, actions)]
        obs = np.stack([s[0] for s in steps])
        agent.record([s[1] for s in steps])
    with pytest.raises(ConfigError, match="has reached its 4 steps"):
        agent.act(obs)
    agent.reset(envs=2)
    agent.act(obs)
    with pytest.raises(ConfigError, match="record"):
        agent.act(obs)


def test_the_filming_camera_keeps_the_agent_in_view_far_down_the_track():
    """The cheetah is moved 25 m from where the episode started (what a running agent covers in
    about 300 steps); the camera eval.py films with must still see it."""
    import mujoco

    from trajectory.envs import render_kwargs
    try:
        env = make_env("HalfCheetah-v5", width=160, height=120, **render_kwargs("HalfCheetah-v5"))
        env.reset(seed=0)
        env.render()
    except Exception as err:  # a machine without any OpenGL backend
        pytest.skip(f"no MuJoCo renderer here: {err}")
    sim = env.unwrapped
    qpos = sim.data.qpos.copy()
    qpos[0] = 25.0
    sim.set_state(qpos, sim.data.qvel.copy())
    camera = sim.mujoco_renderer.camera_id
    assert camera is not None and camera >= 0, "eval.py films with the free camera, which stays behind"
    renderer = mujoco.Renderer(sim.model, 120, 160)
    renderer.enable_segmentation_rendering()  # per pixel: the object drawn there
    renderer.update_scene(sim.data, camera=camera)
    segmentation = renderer.render()
    ids, kinds = segmentation[..., 0], segmentation[..., 1]
    agent = (kinds == mujoco.mjtObj.mjOBJ_GEOM) & (ids >= 0) & (sim.model.geom_bodyid[ids.clip(0)] > 0)
    assert agent.mean() > 0.01  # the cheetah covers a visible part of the frame, not just floor
    renderer.close()
    env.close()


def test_envs_that_terminate_at_different_steps_leave_the_batch(monkeypatch):
    """Hopper episodes end when the hopper falls: each env leaves the planning batch at its own step,
    and its return and length are its own."""
    import gymnasium as gym

    import planners.rollout as rollout_module
    from trajectory.score_stats import failed_episodes

    ends = {}  # env -> the step at which it terminates
    rewards = {}

    class FallsAt(gym.Wrapper):
        def reset(self, *, seed=None, options=None):
            self.t, self.end = 0, 2 + 2 * (seed - 100)  # env i (seed 100 + i) ends at step 2 + 2i
            ends[seed - 100], rewards[seed - 100] = self.end, []
            return self.env.reset(seed=seed, options=options)

        def step(self, action):
            obs, reward, _, truncated, info = self.env.step(action)
            self.t += 1
            rewards[self.env.unwrapped._seed - 100].append(reward)
            return obs, reward, self.t == self.end, truncated, info

    class SeedRecorder(gym.Wrapper):
        def reset(self, *, seed=None, options=None):
            self.env.unwrapped._seed = seed
            return self.env.reset(seed=seed, options=options)

    monkeypatch.setattr(rollout_module, "make_env",
                        lambda *a, **k: FallsAt(SeedRecorder(make_env(*a, **k))))
    batch_sizes = []
    original = rollout_module.build_planner

    def recording_planner(*args, **kwargs):
        planner = original(*args, **kwargs)
        plan = planner.plan
        planner.plan = lambda context: (batch_sizes.append(len(context)), plan(context))[1]
        return planner

    monkeypatch.setattr(rollout_module, "build_planner", recording_planner)
    layout = TokenLayout(obs_dim=11, act_dim=3, vocab=10, seq_len=4)
    cfg = eval_cfg(env_id="Hopper-v5", n_episodes=3, seed=100, max_episode_steps=20, beam_steps=1,
                   beam_context=1)
    result = rollout(tiny_model("s5", layout), fitted_discretizer(layout), layout, cfg,
                     torch.device("cpu"), progress=False)
    assert result["lengths"].tolist() == [ends[i] for i in range(3)] == [2, 4, 6]
    assert result["terminal_step"].tolist() == [1, 3, 5]
    np.testing.assert_allclose(result["returns"], [sum(rewards[i]) for i in range(3)])
    assert batch_sizes == [3, 3, 2, 2, 1, 1]  # the batch shrinks as envs finish; then it stops
    trace = result["trace"]
    assert np.isnan(trace.reward[0, 2:]).all() and not np.isnan(trace.reward[2, :6]).any()
    failures = failed_episodes(result["returns"], trace.first_flip_step, result["terminal_step"])
    assert [(f["episode"], f["step"]) for f in failures] == [(0, 1), (1, 3), (2, 5)]
    assert all(f["reason"].startswith("fell") for f in failures)
