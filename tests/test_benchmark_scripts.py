"""Result scripts under benchmarks/: what they write and the README blocks they rewrite, on small
settings (the numbers themselves are machine-dependent; their bookkeeping is not)."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two runs of a short HalfCheetah rollout that take the same actions up to rounding (another batch
# size, another CPU, a simulator state copied into another env) drift apart: with every control or
# initial state moved by 1e-7 (tests/_perturb.py), 12-step returns moved by up to 7e-3 (5% of a
# return near 0.15). Such returns are compared at this tolerance, never bit for bit; what these
# tests check is which candidate was chosen and that it was replayed from the right state.
SAME_ACTIONS = {"rel": 1e-3, "abs": 0.05}
sys.path.append(os.path.join(ROOT, "benchmarks"))  # last: nothing there may shadow anything
import gpt_decode_floor  # noqa: E402
import int8_scores  # noqa: E402
import planning  # noqa: E402
import profile_table  # noqa: E402
import sampling  # noqa: E402


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The scripts set torch's thread count for this process: put it back for the other tests."""
    import torch
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def readme_with(tmp_path, *blocks):
    path = tmp_path / "README.md"
    path.write_text("intro\n" + "".join(f"<!-- {b}:begin -->\nold\n<!-- {b}:end -->\ntail\n" for b in blocks))
    return str(path)


def block_text(readme, name):
    return open(readme).read().split(f"<!-- {name}:begin -->\n")[1].split(f"\n<!-- {name}:end -->")[0]


def test_planning_measures_each_core_in_its_own_process_and_writes_one_table(tmp_path):
    out = str(tmp_path / "planning_cpu.json")
    readme = readme_with(tmp_path, "planning_cpu")
    planning.main(["--size", "cpu", "--cores", "s5,retnet", "--envs", "1", "--repeats", "1",
                   "--baseline-repeats", "0", "--threads", "1", "--out", out, "--readme", readme])
    saved = json.load(open(out))
    assert list(saved["cores"]) == ["s5", "retnet"]
    processes = {row["process"] for row in saved["cores"].values()}
    assert len(processes) == 2 and os.getpid() not in processes
    for row in saved["cores"].values():
        assert row["ms_per_env_step_cached"] > 0 and row["gflop_per_env_step"] > 0
        assert row["ms_per_env_step_context_only"] > 0 and row["ms_per_env_step_plain"] > 0
        assert row["ceiling_fraction"] == pytest.approx(
            row["gflop_per_env_step"] / (row["ms_per_env_step_cached"] / 1e3) / row["matmul_ceiling_gflops"])
    assert saved["settings"]["envs"] == 1 and saved["settings"]["threads"] == 1
    text = block_text(readme, "planning_cpu")
    lines = text.splitlines()
    assert lines[2].startswith("| s5 | ") and lines[3].startswith("| retnet | ")
    assert f"{saved['cores']['s5']['ms_per_env_step_cached'] / 1e3:.2f}" in lines[2]
    assert "beams' tokens copied" in lines[0]
    s5 = saved["cores"]["s5"]
    assert f"{s5['ms_per_env_step_context_only'] / s5['ms_per_env_step_cached']:.2f}x" in lines[2]
    assert os.path.isfile(out.replace(".json", ".png"))

    # --merge keeps the other rows of a file measured at the same settings, replacing only its cores
    planning.main(["--size", "cpu", "--cores", "s5", "--envs", "1", "--repeats", "1",
                   "--baseline-repeats", "0", "--threads", "1", "--out", out, "--merge"])
    merged = json.load(open(out))["cores"]
    assert merged["retnet"] == saved["cores"]["retnet"]
    assert merged["s5"]["process"] != saved["cores"]["s5"]["process"]
    with pytest.raises(SystemExit, match="other settings"):
        planning.main(["--size", "cpu", "--cores", "s5", "--envs", "2", "--repeats", "1",
                       "--baseline-repeats", "0", "--threads", "1", "--out", out, "--merge"])


def test_planning_times_gpt_beside_torchs_attention_when_its_plan_calls_the_kernel(tmp_path):
    from trajectory.models.ops import decode_attention
    if decode_attention.load() is None:
        pytest.skip(f"the kernel cannot be built here: {decode_attention.unavailable_reason()}")
    out = str(tmp_path / "planning_cpu.json")
    planning.main(["--size", "cpu", "--cores", "gpt", "--envs", "1", "--repeats", "1",
                   "--baseline-repeats", "0", "--threads", "1", "--out", out])
    saved = json.load(open(out))
    gpt = saved["cores"]["gpt"]
    assert gpt["kernel_vs_torch_attention"] == pytest.approx(
        gpt["ms_per_env_step_torch_attention"] / gpt["ms_per_env_step_cached"])
    assert decode_attention.attention_kernel() == "auto"  # put back after the torch-attention row
    # a core whose plan never calls the kernel gets no such row, and dashes in the table
    saved["cores"]["s5"] = {k: v for k, v in gpt.items() if "torch_attention" not in k}
    lines = planning.table(saved).splitlines()
    assert "torch attention, s" in lines[0]
    assert lines[0].startswith("| core | shared, s / env step | torch attention, s | kernel saves |")
    assert lines[2].startswith(f"| gpt | {gpt['ms_per_env_step_cached'] / 1e3:.2f} | "
                               f"{gpt['ms_per_env_step_torch_attention'] / 1e3:.2f} | "
                               f"{gpt['kernel_vs_torch_attention']:.2f}x |")
    assert lines[3].startswith(f"| s5 | {gpt['ms_per_env_step_cached'] / 1e3:.2f} | - | - |")


def test_gpt_decode_floor_ablations_compute_what_they_name_and_count_the_bytes_given():
    import torch

    from trajectory.models.cores.gpt import shared_prefix_attention
    torch.manual_seed(0)
    q = torch.randn(6, 2, 1, 4)
    shared = [(torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4))]
    k, v = torch.randn(6, 2, 3, 4), torch.randn(6, 2, 3, 4)
    ablation = gpt_decode_floor.Ablation()
    torch.testing.assert_close(ablation(q, shared, k, v), shared_prefix_attention(q, shared, k, v))
    assert ablation.suffix_bytes == 2 * k.numel() * 4 and ablation.shared_bytes == 2 * 2 * 2 * 4 * 5 * 4
    ablation.mode = "own suffix only"
    torch.testing.assert_close(ablation(q, shared, k, v), shared_prefix_attention(q, [], k, v))
    ablation.mode = "shared levels only"
    torch.testing.assert_close(ablation(q, shared, k, v),
                               shared_prefix_attention(q, shared, k[:, :, -1:], v[:, :, -1:]))
    ablation.mode = "without attention"
    assert torch.equal(ablation(q, shared, k, v), q)


def test_gpt_decode_floor_writes_its_json_and_puts_the_attention_back(tmp_path):
    from trajectory.models.cores import gpt
    from trajectory.models.ops import decode_attention
    original = gpt.shared_prefix_attention
    out = str(tmp_path / "floor.json")
    result = gpt_decode_floor.main(["--envs", "1", "--repeats", "1", "--out", out])
    assert gpt.shared_prefix_attention is original and decode_attention.attention_kernel() == "auto"
    saved = json.load(open(out))
    assert saved["settings"]["envs"] == 1 and saved["suffix_gb_per_env_step"] > 0
    fused = ["fused kernel"] if decode_attention.load() is not None else []
    assert set(saved["seconds_per_env_step"]) == {"full", "without attention", "shared levels only",
                                                  "own suffix only", *fused}
    assert saved["all_read_floor_seconds"] > saved["suffix_read_floor_seconds"]
    assert saved["attention_seconds"] == pytest.approx(
        result["seconds_per_env_step"]["full"] - result["seconds_per_env_step"]["without attention"])
    assert saved["suffix_read_floor_seconds"] == pytest.approx(
        saved["suffix_gb_per_env_step"] / saved["read_bandwidth_gb_s"])


def test_sampling_benchmark_times_every_pair_and_tabulates_the_json(tmp_path):
    out = str(tmp_path / "sampling.json")
    readme = readme_with(tmp_path, "sampling")
    result = sampling.main(["--rows", "32", "--bins", "16", "--repeats", "3", "--threads", "1",
                            "--out", out, "--readme", readme])
    assert json.load(open(out)) == json.loads(json.dumps(result))
    assert set(result["ops"]) == {"cdf filter (0.6)", "draw with cdf 0.6", "greedy token",
                                  "token log-probability"}
    for op in result["ops"].values():
        assert op["speedup"] == pytest.approx(op["plain_ms"] / op["planner_ms"])
    lines = block_text(readme, "sampling").splitlines()
    assert len(lines) == 2 + 4 + 2 and "(32 rows x 16 bins, 1 threads" in lines[-1]
    assert "tail" in open(readme).read()


def test_the_plain_draw_and_the_planners_draw_choose_the_same_tokens():
    import torch

    from planners.sampling import sample
    logits = 3 * torch.randn(500, 40, generator=torch.Generator().manual_seed(1))
    plain = sampling.sample_by_sorting(logits, torch.Generator().manual_seed(7), 0.6)
    fast = sample(logits, torch.Generator().manual_seed(7), cdf=0.6)
    assert (plain == fast).float().mean() > 0.99  # the same u; only rounding at a bin edge differs


def profile_report(groups_by_core):
    return {"results": [{"core": core, "precision": "none", "ms_per_env_step": sum(g.values()),
                         "ms_per_decoded_token": sum(g.values()) / 100, "groups_ms_per_env_step": g,
                         "achieved_flop_s": 20e9} for core, g in groups_by_core.items()],
            "settings": {"n_envs": 5, "beam_width": 32, "sample_expand": 2, "beam_steps": 5,
                         "beam_context": 5},
            "machine": {"matmul_flop_s": 200e9, "threads": 2}, "weights_note": "random weights"}


def test_profile_table_reports_the_reordering_share_apart_from_the_largest_groups(tmp_path):
    report = profile_report({
        "gpt": {"attention/retention": 500.0, "beam reordering": 100.0, "linear/matmul": 250.0,
                "python overhead": 100.0, "other": 50.0},
        "s5": {"other": 60.0, "linear/matmul": 40.0}})  # an older report: no reordering group
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(report))
    readme = readme_with(tmp_path, "profile_tt")
    text = profile_table.main([str(path), "--readme", readme])
    gpt, s5 = ([cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[2:4])
    assert gpt[4] == "10.0%"  # reordering: 100 of 1,000 ms
    assert gpt[5] == "attention/retention 50%, linear/matmul 25%, python overhead 10%"
    assert gpt[6] == "10.0%"  # 20 of the machine's 200 GFLOP/s
    assert s5[4] == "n/a" and s5[5] == "other 60%, linear/matmul 40%"
    assert block_text(readme, "profile_tt") == text


def test_recipe_time_measures_the_trainers_loop_in_one_process_or_as_ddp_ranks(tmp_path, monkeypatch):
    import recipe_time
    from test_end_to_end import write_halfcheetah_hdf5
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source)
    config = tmp_path / "tiny.yaml"
    config.write_text(f"data:\n  source: {source}\n  cache_dir: {tmp_path / 'data'}\n  seq_len: 4\n"
                      "  n_bins: 16\nmodel:\n  core: s5\n  d_model: 16\n  n_layers: 1\n"
                      "train:\n  batch_size: 8\n  max_tokens: 100000\n")
    out = tmp_path / "recipe_time.json"
    monkeypatch.setattr(recipe_time, "OUT", str(out))
    readme = readme_with(tmp_path, "recipe_time")
    common = [str(config), "--steps", "3", "--warmup", "1", "--readme", readme]
    recipe_time.main(common + ["--threads", "1", "--set", "model.dropout=0"])
    recipe_time.main(common + ["--threads", "1", "--processes", "2"])
    entries = json.load(open(out))
    assert len(entries) == 2
    alone, ranks = entries.values()
    assert (alone["processes"], alone["overrides"]) == (1, ["model.dropout=0"])
    assert (ranks["processes"], ranks["overrides"]) == (2, [])
    for entry in (alone, ranks):
        assert entry["batch_size"] == 8 and entry["tokens_per_s"] > 0
        assert entry["hours_for_budget"] == pytest.approx(100000 / entry["tokens_per_s"] / 3600)
    rows = block_text(readme, "recipe_time").splitlines()[2:]
    assert "| 1 x 1 | `model.dropout=0` |" in rows[0] and "| 2 x 1 | none |" in rows[1]


def test_behaviour_policy_scores_the_datasets_policy_on_evals_seeds_both_ways(tmp_path, monkeypatch):
    import behaviour_policy
    import numpy as np
    import torch

    from trajectory.behaviour.policy import load_policy
    from trajectory.behaviour.reproductions import REPRODUCTIONS
    from trajectory.envs import make_env

    out = str(tmp_path / "behaviour_policy.json")
    monkeypatch.setattr(behaviour_policy, "RESULTS", out)
    readme = readme_with(tmp_path, "behaviour_policy")
    behaviour_policy.main(["--episodes", "3", "--steps", "30", "--seed", "7", "--readme", readme])
    saved = json.load(open(out))
    mean_row = saved["halfcheetah-medium|mean action|7-9|30"]
    sampled_row = saved["halfcheetah-medium|sampled|7-9|30"]

    # episode i is env seed + i acting on the mean action: one env stepped on its own returns the
    # same (up to the batched matmul's rounding), and not what the other episodes return
    repro = REPRODUCTIONS["halfcheetah-medium"]
    actor, env = load_policy(repro.policy), make_env(repro.env_id, max_episode_steps=30)
    obs, total = env.reset(seed=8)[0], 0.0
    for _ in range(30):
        with torch.no_grad():
            action = actor.act(torch.as_tensor(obs, dtype=torch.float32)[None, None], True)[0, 0]
        obs, reward, *_ = env.step(action.numpy())
        total += reward
    assert mean_row["returns"][1] == pytest.approx(total, rel=2e-3)
    assert all(r != pytest.approx(total, rel=2e-3) for i, r in enumerate(mean_row["returns"]) if i != 1)

    # sampling is fixed by the seed, and it is not the mean action
    again = behaviour_policy.measure("halfcheetah-medium", "sampled", 7, 3, 30)
    assert again["returns"] == sampled_row["returns"]
    assert not np.allclose(sampled_row["returns"], mean_row["returns"])
    assert sampled_row["score"]["n"] == 3 and sampled_row["failed"] == 0
    lines = block_text(readme, "behaviour_policy").splitlines()
    assert len(lines) == 4 and "| mean action | 3 x 30 | 7-9 |" in lines[2]
    assert f"**{mean_row['score']['mean']:.1f}**" in lines[2]


@pytest.fixture(scope="module")
def halfcheetah_checkpoint(tmp_path_factory):
    """A tiny random S5 model laid out for HalfCheetah (17 + 6 dimensions), saved as a run."""
    from test_planner import save_tiny_run

    from trajectory.models.trajectory_model import TokenLayout
    layout = TokenLayout(obs_dim=17, act_dim=6, vocab=12, seq_len=4)
    return save_tiny_run(tmp_path_factory.mktemp("cheetah"), layout,
                         {"data": {"env_id": "HalfCheetah-v5"}}, -3.0, 3.0)


def test_spearman_and_the_gains_over_the_median_action():
    from action_ranking import spearman, state_measures
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.75 ** 0.5)  # tied ranks averaged
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # NaN: no ranking
    # candidates: median, planner's, two draws; the model prefers the last, which is truly worst
    m = state_measures(q_model=np.array([0.0, 1.0, 0.5, 2.0]), q_real=np.array([1.0, 3.0, 2.0, 0.0]),
                       r_model=np.array([0.0, 1.0, 2.0, 3.0]), r_real=np.array([0.0, 1.0, 2.0, 3.0]))
    assert m["gain_model_choice"] == -1.0 and m["gain_planner"] == 2.0 and m["gain_best"] == 2.0
    assert m["gain_drawn"] == pytest.approx(0.0) and m["reward_rank_correlation"] == pytest.approx(1.0)
    assert m["rank_correlation"] == pytest.approx(spearman([0, 1, 0.5, 2], [1, 3, 2, 0]))
    # a nudged state moves the velocities only, by about the scale asked
    from action_ranking import nudged, nudged_measures
    qpos, qvel = np.arange(9.0), np.zeros(9)
    new_pos, new_vel = nudged((qpos, qvel), 1e-3, np.random.default_rng(0))
    assert np.array_equal(new_pos, qpos) and 0 < np.abs(new_vel).max() < 1e-2
    n = nudged_measures(nudged_q=np.array([0.0, 5.0, 1.0]), q_real=np.array([2.0, 1.0, 3.0]))
    assert n["gain_nudged_choice"] == -1.0 and n["nudged_rank_correlation"] == pytest.approx(-0.5)
    from action_ranking import critic_measures
    c = critic_measures(critic_q=np.array([0.0, 1.0, 2.0]), q_real=np.array([1.0, 0.0, 4.0]))
    assert c["gain_critic_choice"] == 3.0 and c["critic_rank_correlation"] == pytest.approx(0.5)


def test_action_ranking_scores_median_planner_and_drawn_candidates_and_replays_them_exactly(
        halfcheetah_checkpoint, tmp_path):
    import action_ranking
    import torch

    from planners.beam import plan_actions
    from planners.policy import PolicyPlanner
    from planners.rollout import History, load_for_eval, transition_tokens
    from trajectory.config import EvalConfig
    from trajectory.envs import make_env

    cfg = EvalConfig(checkpoints_path=halfcheetah_checkpoint, planner="policy", policy_actions="median")
    checkpoint, model = load_for_eval(cfg, torch.device("cpu"))
    disc, layout = checkpoint.discretizer, checkpoint.layout
    policy = PolicyPlanner(model, disc, layout, cfg)
    # two envs driven by the median policy for 3 steps
    envs = [make_env("HalfCheetah-v5") for _ in range(2)]
    obs = np.stack([env.reset(seed=40 + i)[0] for i, env in enumerate(envs)])
    history = History(2, 20, layout)

    def median_policy_steps(steps: int, discount: float) -> np.ndarray:  # the discounted returns
        total = np.zeros(2)
        for h in range(steps):
            obs_tokens = disc.encode(obs, dims=slice(0, 17))
            plan = policy.plan(torch.as_tensor(history.context(np.arange(2), obs_tokens, 2)))
            act_tokens, actions = plan_actions(plan, disc, 17)
            rewards = np.zeros(2)
            for i, env in enumerate(envs):
                obs[i], rewards[i], *_ = env.step(actions[i])
            total += discount ** h * rewards
            history.append(np.arange(2), transition_tokens(disc, layout, obs_tokens, act_tokens, rewards))
            history.advance()
        return total

    median_policy_steps(3, 1.0)
    obs_tokens = disc.encode(obs, dims=slice(0, 17))
    context = torch.as_tensor(history.context(np.arange(2), obs_tokens, 2))
    median_plan = policy.plan(context)
    forced = torch.randint(0, 12, (2, 6))
    tokens, reward, q = action_ranking.score_candidates(model, disc, layout, EvalConfig(cdf_act=0.6),
                                                        context, forced, 5, torch.Generator().manual_seed(0))
    assert torch.equal(tokens[:, 0], median_plan.actions[:, 0])  # candidate 0: the median policy
    assert torch.equal(tokens[:, 1], forced)  # candidate 1: the planner's action, as given
    assert q[:, 0] == pytest.approx(median_plan.score, abs=1e-4)  # scored as the policy scores it
    assert not torch.equal(tokens[:, 2], tokens[:, 3])  # draws differ

    # the median candidate, replayed from copied simulator states, earns what the original envs
    # earn by going on with the median policy; a copy of one candidate earns the same
    candidates = tokens.numpy().copy()
    candidates[:, 4] = candidates[:, 2]
    pool = [make_env("HalfCheetah-v5") for _ in range(10)]
    states = [action_ranking.simulator_state(env) for env in envs]
    realised, first = action_ranking.realised_returns(model, disc, layout, cfg, "HalfCheetah-v5", pool,
                                                      states, history, obs.copy(), candidates, 4,
                                                      0.9, 2)
    truth = median_policy_steps(4, 0.9)
    assert realised[:, 0] == pytest.approx(truth, **SAME_ACTIONS)
    assert realised[:, 4] == pytest.approx(realised[:, 2], **SAME_ACTIONS)
    assert not np.allclose(realised[:, 0], realised[:, 3])
    assert np.all(first != 0)


def test_action_ranking_writes_one_entry_per_checkpoint_and_its_table(halfcheetah_checkpoint, tmp_path):
    import shutil

    import action_ranking
    import torch

    from trajectory.models.critic import ActionValueCritic
    run = str(tmp_path / os.path.basename(halfcheetah_checkpoint))
    shutil.copytree(halfcheetah_checkpoint, run)  # with a critic: its ranking is measured too
    critic = ActionValueCritic(17, 6, hidden=8)
    os.makedirs(os.path.join(run, "critic"))
    torch.save({"config": critic.config(), "state_dict": critic.state_dict()},
               os.path.join(run, "critic", "critic.pt"))
    halfcheetah_checkpoint = run
    out = str(tmp_path / "action_ranking.json")
    readme = readme_with(tmp_path, "action_ranking")
    action_ranking.main([halfcheetah_checkpoint, "--envs", "2", "--times", "0,3", "--candidates", "4",
                         "--horizon", "3", "--set", "beam_width=4", "beam_steps=2",
                         "--out", out, "--readme", readme])
    saved = json.load(open(out))
    (entry,) = saved.values()
    assert entry["states"] == 4 and entry["settings"]["planner"] == {"beam_steps": "2", "beam_width": "4"}
    assert len(entry["scatter"]) == 4 and all(len(p) == 4 and p[0] == 0.0 for p, _ in entry["scatter"])
    summary = entry["summary"]
    for name in ("imagined_rank_correlation", "nudged_rank_correlation", "gain_nudged_choice",
                 "critic_rank_correlation", "gain_critic_choice"):
        assert len(summary[name]) == 2, name  # mean and standard error over the states
    assert summary["gain_best"][0] >= max(summary[n][0] for n in (
        "gain_model_choice", "gain_imagined_choice", "gain_nudged_choice", "gain_planner",
        "gain_critic_choice"))
    lines = block_text(readme, "action_ranking").splitlines()
    assert len(lines) == 3 and os.path.basename(halfcheetah_checkpoint) in lines[2]
    assert os.path.isfile(out.replace(".json", ".png"))
    with pytest.raises(SystemExit, match="no run folder"):
        action_ranking.main([str(tmp_path / "missing"), "--out", out])
    with pytest.raises(SystemExit, match="nonesuch"):
        action_ranking.main([halfcheetah_checkpoint, "--set", "nonesuch=1", "--out", out])


def test_oracle_search_with_one_candidate_is_the_mean_action_and_more_candidates_never_lose_a_step(
        tmp_path, monkeypatch):
    import behaviour_policy
    import oracle_search
    out = str(tmp_path / "oracle_search.json")
    monkeypatch.setattr(oracle_search, "RESULTS", out)
    readme = readme_with(tmp_path, "oracle_search")
    oracle_search.main(["--episodes", "3", "--steps", "12", "--candidates", "1", "--seed", "5",
                        "--readme", readme])
    one = json.load(open(out))["halfcheetah-medium|K=1|H=30|5-7|12"]
    policy = behaviour_policy.measure("halfcheetah-medium", "mean action", 5, 3, 12)
    assert one["returns"] == pytest.approx(policy["returns"], **SAME_ACTIONS)
    assert one["mean_action_share"] == 1.0
    # one step of one simulated step: the best of the candidates' true rewards, never below the mean's
    best = oracle_search.measure("halfcheetah-medium", 5, 3, 1, 6, 1)
    first = oracle_search.measure("halfcheetah-medium", 5, 3, 1, 1, 1)
    assert all(b >= f - 1e-9 for b, f in zip(best["returns"], first["returns"]))
    assert any(b > f for b, f in zip(best["returns"], first["returns"]))
    lines = block_text(readme, "oracle_search").splitlines()
    assert len(lines) == 3 and "| `halfcheetah-medium` | 1 | - (the mean action) | 3 x 12 | 5-7 |" in lines[2]


def test_oracle_search_ranked_by_a_critic_takes_the_candidate_it_values_most(tmp_path, monkeypatch):
    import oracle_search
    import torch

    from trajectory.behaviour.policy import load_policy
    from trajectory.behaviour.reproductions import REPRODUCTIONS
    from trajectory.models.critic import ActionValueCritic
    actor = load_policy(REPRODUCTIONS["halfcheetah-medium"].policy)

    class MeanLover:  # values the actor's mean action most: the search must equal the mean action
        def q(self, obs, act):
            mean = torch.from_numpy(oracle_search.mean_actions(actor, obs.numpy()))
            return -(act - mean).square().sum(-1)

    env_id = REPRODUCTIONS["halfcheetah-medium"].env_id
    loved = oracle_search.run_episodes(actor, env_id, 5, 2, 10, 4, 1, MeanLover())
    mean = oracle_search.run_episodes(actor, env_id, 5, 2, 10, 1, 1)
    assert loved["mean_action_share"] == 1.0
    assert loved["returns"] == pytest.approx(mean["returns"], **SAME_ACTIONS)
    # a saved critic: its values of each candidate, and an entry that names how it was trained
    critic = ActionValueCritic(17, 6, hidden=8)
    path = str(tmp_path / "critic.pt")
    torch.save({"config": critic.config(), "state_dict": critic.state_dict(), "expectile": 0.7,
                "step": 3000, "discount": 0.99}, path)
    obs = np.random.default_rng(0).normal(size=(2, 17))
    options = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 6)).astype(np.float32)
    values = oracle_search.critic_values(critic, obs, options)
    with torch.no_grad():
        expected = critic.q(torch.tensor(obs[1:], dtype=torch.float32), torch.from_numpy(options[1, 2:]))
    assert values.shape == (2, 3) and values[1, 2] == pytest.approx(float(expected[0]), rel=1e-5)
    out = str(tmp_path / "oracle_search.json")
    monkeypatch.setattr(oracle_search, "RESULTS", out)
    oracle_search.main(["--episodes", "2", "--steps", "3", "--candidates", "3", "--seed", "5",
                        "--critic", path])
    entry = json.load(open(out))["halfcheetah-medium|K=3|H=0|5-6|3|critic=expectile 0.7, 3k steps"]
    assert entry["ranker"] == "critic" and entry["critic"]["path"] == path


def test_oracle_search_simulates_each_candidate_from_the_copied_state():
    import oracle_search

    from trajectory.behaviour.policy import load_policy
    from trajectory.behaviour.reproductions import REPRODUCTIONS
    from trajectory.envs import make_env
    actor = load_policy(REPRODUCTIONS["halfcheetah-medium"].policy)
    env = make_env("HalfCheetah-v5")
    obs = env.reset(seed=9)[0]
    for _ in range(4):
        obs, *_ = env.step(oracle_search.mean_actions(actor, obs[None])[0])
    state = (env.unwrapped.data.qpos.copy(), env.unwrapped.data.qvel.copy())
    options = oracle_search.candidate_actions(actor, obs[None], np.ones((1, 2, 6), dtype=np.float32))
    assert np.allclose(options[0, 0], oracle_search.mean_actions(actor, obs[None])[0])
    copies = []
    for _ in range(3):
        copy = make_env("HalfCheetah-v5")
        copy.reset(seed=0)
        copies.append(copy.unwrapped)
    simulated = oracle_search.simulated_returns(actor, copies, [state], options, 3)
    for k in range(3):  # by hand: the candidate from the original env's state, then mean actions
        replay = make_env("HalfCheetah-v5")
        replay.reset(seed=1)
        replay.unwrapped.set_state(*state)
        total, action = 0.0, options[0, k]
        for h in range(3):
            o, reward, *_ = replay.step(action)
            total += 0.99 ** h * reward
            action = oracle_search.mean_actions(actor, o[None])[0]
        assert simulated[0, k] == pytest.approx(total, **SAME_ACTIONS)
    assert simulated[0, 1] == pytest.approx(simulated[0, 2], **SAME_ACTIONS)  # same noise, same action


def test_training_seeds_trains_evaluates_and_combines_the_runs_and_resumes_where_it_stopped(tmp_path,
                                                                                             monkeypatch):
    """Two seeds of a tiny recipe: each trained, given a critic and evaluated both ways; a second
    `run` finds everything done; `combine` writes the per-run and combined rows, the rows file that
    rebuilds them, and the pages."""
    import training_seeds
    from test_end_to_end import write_halfcheetah_hdf5
    from test_readme_commands import TINY_TRAINING
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    source = tmp_path / "halfcheetah_tiny.hdf5"
    write_halfcheetah_hdf5(source, episodes=4, steps=30)
    runs = tmp_path / "runs"
    common = ["--config", os.path.join(ROOT, "configs/cpu/halfcheetah_medium_s5.yaml"), "--seeds", "1", "2",
              "--runs-dir", str(runs), "--name", "tiny"]
    tiny = [t for t in TINY_TRAINING if not t.startswith("train.max_tokens")]
    run_args = ["run", *common, "--max-tokens", "1000", "--critic-steps", "20", "--processes", "1",
                "--eval-overrides", "n_episodes=2", "max_episode_steps=3", "beam_width=2", "--",
                f"data.source={source}", f"data.cache_dir={tmp_path / 'data'}", *tiny]
    training_seeds.main(run_args)
    folders = [runs / f"tiny-seed{s}" for s in (1, 2)]
    for folder in folders:
        assert (folder / "critic" / "critic.pt").is_file()
        # the recipe weights action tokens by the run's own critic, trained first
        assert "advantage_beta: 2.0" in (folder / "checkpoint" / "config.yaml").read_text()
        for way in ("planner", "policy"):
            assert (folder / f"eval_{way}_1000" / "report.json").is_file()
    weights = [(f / "checkpoint" / "model.pt").read_bytes() for f in folders]
    assert weights[0] != weights[1]  # the seeds made two different runs
    stamps = [os.stat(f / "eval_planner_1000" / "report.json").st_mtime_ns for f in folders]
    training_seeds.main(run_args)  # all done: nothing is trained or evaluated again
    assert stamps == [os.stat(f / "eval_planner_1000" / "report.json").st_mtime_ns for f in folders]

    scores_json = tmp_path / "results" / "scores.json"
    scores_json.parent.mkdir()
    import scores
    monkeypatch.setattr(scores, "SCORES", str(scores_json))
    rows_tsv = tmp_path / "score_rows.tsv"
    rows_tsv.write_text("# folder\ttraining\thardware\n")
    results_page, readme = readme_with(tmp_path, "scores"), str(tmp_path / "FRONT.md")
    open(readme, "w").write("x\n<!-- headline:begin -->\nold\n<!-- headline:end -->\n")
    training_seeds.main(["combine", *common, "--training", "tiny", "--hardware", "1 CPU core",
                         "--evals-dir", str(tmp_path / "evals"), "--rows", str(rows_tsv),
                         "--results-page", results_page, "--readme", readme])
    rows = json.loads(scores_json.read_text())["rows"]
    assert [r.get("training_seeds", 1) for r in rows] == [1, 1, 2, 1, 1, 2]
    planner_runs, combined = rows[:2], rows[2]
    assert combined["score"]["mean"] == pytest.approx(np.mean([r["score"]["mean"] for r in planner_runs]))
    assert combined["checkpoint"].endswith("tiny-seed{1,2}/checkpoint") and combined["advantage_beta"] == 2.0
    listed = [line.split("\t")[0] for line in rows_tsv.read_text().splitlines()[1:]]
    assert len(listed) == 6 and listed[2] == ";".join(listed[:2])
    # 2 episodes of 3 steps are no score: the pages are rewritten, and their tables leave them out
    assert not combined["protocol"] and "mean of 2 training runs" in combined["training"]
    assert "old" not in block_text(results_page, "scores") and "old" not in open(readme).read()


def test_training_seeds_trains_no_critic_where_the_recipe_needs_none(tmp_path, monkeypatch):
    import training_seeds

    import trajectory.training.critic as critic_training
    import trajectory.training.distributed as distributed
    stages = []
    monkeypatch.setattr(critic_training, "train_critic", lambda cfg: stages.append("critic"))
    monkeypatch.setattr(distributed, "launch", lambda command, processes: stages.append("model") or 1)

    def run_args(config):
        return ["run", "--config", os.path.join(ROOT, config), "--seeds", "1", "--runs-dir", str(tmp_path),
                "--name", "none", "--max-tokens", "1000", "--critic-steps", "0"]

    # walker2d's recipe plans with the median policy and weights nothing: straight to the model
    with pytest.raises(SystemExit, match="training .*none-seed1 failed"):
        training_seeds.main(run_args("configs/cpu/walker2d_medium_s5.yaml"))
    assert stages == ["model"]
    # halfcheetah's weights its action tokens by the run's critic; hopper's plans with it
    for config, why in (("configs/cpu/halfcheetah_medium_s5.yaml", "advantage_beta"),
                        ("configs/cpu/hopper_medium_s5.yaml", "plans with the run's critic")):
        with pytest.raises(SystemExit, match=f"needs one: .*{why}"):
            training_seeds.main(run_args(config))
    assert stages == ["model"]


def test_training_seeds_stops_when_a_stage_returns_short_of_its_budget(tmp_path, monkeypatch):
    """A critic or model stopped by a signal saves and returns: the next stage must not build on
    it (a model weighted by a half-trained critic, the scores of a half-trained model)."""
    import training_seeds

    import trajectory.training.critic as critic_training
    import trajectory.training.distributed as distributed
    from trajectory.training.critic import critic_folder
    stages = []

    def critic_stopped_by_a_signal(cfg):
        stages.append("critic")
        os.makedirs(critic_folder(cfg.run), exist_ok=True)
        open(os.path.join(critic_folder(cfg.run), "critic.pt"), "wb").close()
        json.dump({"step": cfg.steps // 4, "stop_reason": "signal"},
                  open(os.path.join(critic_folder(cfg.run), "metrics.json"), "w"))

    monkeypatch.setattr(critic_training, "train_critic", critic_stopped_by_a_signal)
    monkeypatch.setattr(distributed, "launch", lambda command, processes: stages.append("model") or 0)
    monkeypatch.setattr(training_seeds, "resolved_recipe", lambda *a: "recipe.yaml")
    run_args = ["run", "--config", os.path.join(ROOT, "configs/cpu/hopper_medium_s5.yaml"), "--seeds",
                "1", "--runs-dir", str(tmp_path), "--name", "short", "--max-tokens", "1000",
                "--critic-steps", "20"]
    with pytest.raises(SystemExit, match="critic of .*short-seed1 stopped at 5 of 20 .signal."):
        training_seeds.main(run_args)
    assert stages == ["critic"]  # the model was not trained on it

    # the critic done, the model returns short of its tokens: nothing is evaluated
    critic = critic_folder(str(tmp_path / "short-seed1"))
    json.dump({"step": 20}, open(os.path.join(critic, "metrics.json"), "w"))
    checkpoint = tmp_path / "short-seed1" / "checkpoint"

    def model_stopped_by_a_signal(command, processes):
        stages.append("model")
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "metrics.json").write_text(json.dumps({"tokens": 400, "stop_reason": "signal"}))
        return 0

    monkeypatch.setattr(distributed, "launch", model_stopped_by_a_signal)
    monkeypatch.setattr(training_seeds, "evaluate_run", lambda *a: stages.append("evaluate"))
    with pytest.raises(SystemExit, match="model of .*short-seed1 stopped at 400 of 1,000 .signal."):
        training_seeds.main(run_args)
    assert stages == ["critic", "model"]


def score_row(checkpoint, quantize, mean, sem, planner="critic", seeds=(1000, 1024)):
    settings = {"planner": planner, "beam_width": 32, "quantize": quantize}
    label = f"{planner} planner" + ("" if quantize == "none" else f", int8 {quantize}")
    return {"checkpoint": checkpoint, "env": "halfcheetah", "actions": label, "seeds": list(seeds),
            "planner_settings": settings, "score": {"n": 25, "mean": mean, "sem": sem}, "failed": 0}


def test_int8_scores_pair_each_int8_row_with_its_fp32_row(tmp_path):
    """Rows pair by checkpoint, seeds and planner settings; a group without fp32, or with fp32 only,
    is left out; the share kept is int8 / fp32 with its standard error."""
    rows = [score_row("runs/a/checkpoint", "none", 50.0, 0.5),
            score_row("runs/a/checkpoint", "static", 45.0, 0.9),
            score_row("runs/a/checkpoint", "dynamic", 50.0, 0.5, planner="beam"),  # no fp32 beam row
            score_row("runs/a/checkpoint", "none", 40.0, 1.0, seeds=(100, 124)),  # fp32 only
            score_row("runs/b/checkpoint", "none", 20.0, 1.0),
            score_row("runs/b/checkpoint", "compiled", 21.0, 1.0)]
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"rows": rows}))
    readme, out = readme_with(tmp_path, "int8_scores"), tmp_path / "int8.json"
    text = int8_scores.main(["--scores", str(scores), "--readme", readme, "--json", str(out)])
    found = json.loads(out.read_text())["comparisons"]
    assert [(e["checkpoint"], sorted(k for k in e if k in int8_scores.MODES)) for e in found] == [
        ("runs/a/checkpoint", ["static"]), ("runs/b/checkpoint", ["compiled"])]
    assert found[0]["static"]["kept"] == pytest.approx(0.9)
    assert found[0]["static"]["kept_sem"] == pytest.approx(0.9 * np.hypot(0.9 / 45, 0.5 / 50))
    assert "45.0 ± 0.9 (90 ± 2%)" in text and "| a |" in text and block_text(readme, "int8_scores") == text


def test_imitation_gap_measures_the_median_action_in_the_behaviours_noise_units(
        halfcheetah_checkpoint, tmp_path, monkeypatch):
    import behaviour_policy
    import imitation_gap
    import torch

    from planners.beam import plan_actions
    from planners.policy import PolicyPlanner
    from planners.rollout import load_for_eval
    from trajectory.behaviour.policy import load_policy
    from trajectory.behaviour.reproductions import REPRODUCTIONS
    from trajectory.config import EvalConfig
    from trajectory.envs import make_env

    # an action at tanh(mean + 2 std) is 2 of the behaviour's standard deviations from its centre
    mean, std = np.array([[0.3, -1.0]]), np.array([[0.5, 0.2]])
    assert imitation_gap.noise_units(np.tanh(mean + 2 * std), mean, std)[0] == pytest.approx([2.0, 2.0])
    assert np.isfinite(imitation_gap.noise_units(np.array([[1.0, -1.0]]), mean, std)).all()

    out = str(tmp_path / "imitation_gap.json")
    monkeypatch.setattr(imitation_gap, "OUT", out)
    readme = readme_with(tmp_path, "imitation_gap")
    imitation_gap.main([halfcheetah_checkpoint, "--episodes", "2", "--steps", "1", "--seed", "5",
                        "--readme", readme])
    first = json.load(open(out))[f"{os.path.basename(halfcheetah_checkpoint)}|behaviour|5-6|1"]
    # one step: the model's median action at each episode's first observation, against the actor
    cfg = EvalConfig(checkpoints_path=halfcheetah_checkpoint, planner="policy", policy_actions="median")
    checkpoint, model = load_for_eval(cfg, torch.device("cpu"))
    repro = REPRODUCTIONS["halfcheetah-medium"]
    obs = np.stack([make_env(repro.env_id).reset(seed=5 + i)[0] for i in range(2)])
    tokens = checkpoint.discretizer.encode(obs, dims=slice(0, 17))
    plan = PolicyPlanner(model, checkpoint.discretizer, checkpoint.layout, cfg).plan(torch.as_tensor(tokens))
    _, actions = plan_actions(plan, checkpoint.discretizer, 17)
    with torch.no_grad():
        mu, log_std = load_policy(repro.policy).distribution(torch.as_tensor(obs, dtype=torch.float32)[None])
    z = np.abs(np.arctanh(np.clip(actions, -1 + 1e-6, 1 - 1e-6)) - mu[0].numpy()) / log_std[0].exp().numpy()
    assert first["z_model"] == pytest.approx(z.mean(axis=0).tolist(), rel=1e-4)
    # the observation-bin floor: the actor at the bin centres the tokens name, against the actor
    seen = torch.as_tensor(checkpoint.discretizer.decode(tokens, dims=slice(0, 17)), dtype=torch.float32)
    with torch.no_grad():
        mu_seen = load_policy(repro.policy).distribution(seen[None])[0][0].numpy()
    z_seen = np.abs(np.arctanh(np.tanh(mu_seen)) - mu[0].numpy()) / log_std[0].exp().numpy()
    assert first["z_obs_bins"] == pytest.approx(z_seen.mean(axis=0).tolist(), rel=1e-3, abs=1e-5)
    assert first["z_obs_bins_mean"] > 0  # bin centres are not the observations
    assert first["z_floor_mean"] < first["z_model_mean"]  # a random model is far from the actor

    # the behaviour drives: its mean-action episodes; the model drives: other episodes
    imitation_gap.main([halfcheetah_checkpoint, "--episodes", "2", "--steps", "8", "--seed", "5"])
    saved = json.load(open(out))
    by_behaviour = saved[f"{os.path.basename(halfcheetah_checkpoint)}|behaviour|5-6|8"]
    by_model = saved[f"{os.path.basename(halfcheetah_checkpoint)}|model|5-6|8"]
    policy = behaviour_policy.measure("halfcheetah-medium", "mean action", 5, 2, 8)
    assert by_behaviour["returns"] == pytest.approx(policy["returns"], rel=2e-3)
    assert not np.allclose(by_model["returns"], by_behaviour["returns"], rtol=1e-3, atol=0)
    assert by_behaviour["steps_measured"] == 16
    lines = block_text(readme, "imitation_gap").splitlines()
    assert len(lines) == 4 and "| behaviour | 2 x 1 | 5-6 | 2 |" in lines[2] and "| model |" in lines[3]


def test_imitation_gap_action_floor_is_the_entropy_of_the_behaviours_noise_in_the_bins():
    import torch
    from imitation_gap import action_ce_floor

    class Actor:  # a squashed Gaussian with fixed centres and spreads
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean), torch.tensor(std)

        def distribution(self, obs):
            n = obs.shape[1]
            return self.mean.expand(1, n, -1), self.std.log().expand(1, n, -1)

    obs = np.zeros((5, 3), dtype=np.float32)
    # dim 0 split at its centre: two equally likely bins; dim 1 far inside one bin: no entropy
    edges = np.array([[-1.0, np.tanh(0.3), 1.0], [-1.0, 0.0, 1.0]])
    floor = action_ce_floor(Actor([0.3, 3.0], [0.5, 0.1]), obs, edges)
    assert floor == pytest.approx([np.log(2), 0.0], abs=1e-6)
    # many bins of equal width in atanh space: the differential entropy of the noise less log(width)
    width = 0.01
    cuts = np.tanh(np.arange(-4.0, 4.0 + width / 2, width))[None]
    fine = action_ce_floor(Actor([0.2], [0.5]), obs, cuts)
    assert fine[0] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * 0.25) - np.log(width), abs=1e-3)


def test_imitation_gap_sets_a_runs_held_out_action_cross_entropy_beside_its_floor(tmp_path):
    from imitation_gap import action_ce_floor, ce_above_floor
    from test_planner import save_tiny_run

    from trajectory.behaviour import generate
    from trajectory.behaviour.policy import load_policy
    from trajectory.behaviour.reproductions import REPRODUCTIONS
    from trajectory.checkpoint import load_checkpoint
    from trajectory.data.sources import load_minari_path
    from trajectory.models.trajectory_model import TokenLayout
    repro = REPRODUCTIONS["halfcheetah-medium"]
    run = save_tiny_run(tmp_path / "run", TokenLayout(obs_dim=17, act_dim=6, vocab=12, seq_len=4),
                        {"held_out": {"ce_act": 2.2}})
    checkpoint, actor = load_checkpoint(run), load_policy(repro.policy)
    checkpoint.config.data.cache_dir = str(tmp_path / "data")
    assert ce_above_floor(checkpoint, repro, actor) == {}  # no dataset on this machine: left out

    generate.generate_dataset(str(tmp_path / "data" / "minari"), repro.dataset_id, steps=120, max_steps=60,
                              num_envs=2, policy_path=repro.policy, env_id=repro.env_id, progress=False)
    fit = ce_above_floor(checkpoint, repro, actor, states=50)
    assert fit["ce_act_held_out"] == 2.2 and len(fit["ce_act_floor_dims"]) == 6
    # the floor of the dataset's own observations, at most the entropy of 12 equally likely bins
    observations = load_minari_path(str(tmp_path / "data" / "minari" / repro.dataset_id), "test").observations
    every_state = action_ce_floor(actor, observations, checkpoint.discretizer.edges[17:23])
    assert 0 < fit["ce_act_floor"] <= np.log(12) and fit["ce_act_floor"] == pytest.approx(every_state.mean(),
                                                                                          rel=0.2)


def test_int8_routes_bound_plans_with_model_steps_that_cost_one_real_call_per_shape():
    import torch
    from int8_routes import FREE_MODEL, FreeModelSteps, planner_call, routes
    from test_planner import tiny_model

    from planners.profiling import random_discretizer
    from trajectory.models.trajectory_model import TokenLayout

    layout = TokenLayout(obs_dim=3, act_dim=2, vocab=12, seq_len=10)  # room for a 5-step beam
    model = tiny_model("s5", layout)
    calls = []
    real_step = model.step
    model.step = lambda tokens, state: calls.append(tuple(tokens.shape)) or real_step(tokens, state)
    free = routes()[FREE_MODEL](model)
    assert isinstance(free, FreeModelSteps) and free.layout is model.layout
    state = free.init_state(2, "cpu")
    first, after = free.step(torch.zeros(2, 3, dtype=torch.long), state)
    again, later = free.step(torch.ones(2, 3, dtype=torch.long), after)
    assert again is first and calls == [(2, 3)]  # one real call for the shape, then none
    assert (after.pos, later.pos) == (3, 6) and later.core is state.core
    # a whole beam plan runs through it, one real call per shape it meets
    plan = planner_call(free, layout, random_discretizer(layout), "beam", None, envs=2)
    shapes = len(calls)
    plan()
    assert len(calls) == shapes
