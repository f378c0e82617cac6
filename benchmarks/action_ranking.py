"""Does the model rank candidate actions the way the environment does? The question under every
planner: search can only beat the model's own policy if its ranking of candidates carries signal.

    python benchmarks/action_ranking.py runs/<name> [runs/<other> ...] [--envs 10] \
        [--times 100,400,700] [--candidates 16] [--horizon 200] [--model-horizon 5] [--nudge 1e-3] \
        [--seed 100] [--set key=value ...] [--readme docs/results.md]

For each checkpoint, ``--envs`` environments (reset with ``seed + i``, as eval.py) are driven by the
model's median policy. At each step of ``--times`` every environment's simulator state is copied
into ``--candidates`` fresh copies, one per candidate action for that state:

* candidate 0: the median policy's action (the baseline every planner has to beat);
* candidate 1: the action the beam planner would take (eval_base.yaml's settings, ``--set`` overrides);
* the others: drawn from the model the way the planner draws its candidates (``cdf_act``, ``k_act``,
  one dimension at a time).

The model scores each candidate as a one-step planner does, Q = r + discount * V with the reward and
the value-to-go read off its distributions after the candidate's action tokens. The environment
scores it by what happens: the candidate action, then the median policy for the rest of
``--horizon`` steps, discounted with the data's discount (truncated there: with 0.99 and 200 steps
the unseen tail weighs 0.13, and it follows the same policy for every candidate). MuJoCo is
deterministic, so each realised Q is exact for its state.

The model also scores each candidate by imagination (:func:`planners.imagine.imagine`): the
candidate, then its median policy for ``--model-horizon`` transitions inside the model, the
discounted predicted rewards plus the value after them. And each candidate is replayed once more
from the state with its joint velocities moved by ``--nudge`` x N(0, 1) (a hundredth of the reset
noise by default): if the realised ranking does not survive that, no model could learn it.

Per state: the Spearman correlation over the candidates between the realised Q and the model's
one-step Q, its imagined Q, the realised Q after the nudge (and between the predicted and the
realised first reward), and what choosing gains over the median action in realised Q: the best
candidate by each of those rankings, a drawn candidate on average, the planner's action, and the
best candidate (what a perfect ranker would gain from this candidate set). Means
with their standard errors over states go to ``benchmarks/results/action_ranking.json`` (entries of
other checkpoints or settings are kept), a plot beside it, and with ``--readme`` the block
``action_ranking`` of that Markdown file (docs/results.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from readme_blocks import load_results, markdown_table, publish  # noqa: E402

from planners import build_planner  # noqa: E402
from planners.beam import plan_actions  # noqa: E402
from planners.imagine import imagine  # noqa: E402
from planners.policy import PolicyPlanner  # noqa: E402
from planners.rollout import History, load_for_eval, resolve_env_id, transition_tokens  # noqa: E402
from planners.sampling import median, sample  # noqa: E402
from trajectory.config import EvalConfig  # noqa: E402
from trajectory.configutil import ConfigError, build_config  # noqa: E402
from trajectory.envs import make_env, simulator_state  # noqa: E402
from trajectory.io import save_json  # noqa: E402
from trajectory.models.critic import candidate_values, load_critic  # noqa: E402

RESULTS = os.environ.get("ACTION_RANKING_OUT", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "action_ranking.json"))
MEDIAN, PLANNER = 0, 1  # candidate indices


@torch.no_grad()
def score_candidates(model, discretizer, layout, cfg: EvalConfig, context: torch.Tensor,
                     planner_tokens: torch.Tensor, candidates: int, generator: torch.Generator):
    """Every env's candidates and the model's one-step estimates of them.

    context [E, L]; planner_tokens [E, A] (the beam planner's action). Returns action tokens
    [E, K, A] (K = ``candidates``: the median action, the planner's, then draws), the predicted
    reward [E, K] and Q = reward + discount * value [E, K]."""
    envs = context.shape[0]
    kind = torch.arange(envs * candidates) % candidates  # [E K]
    forced = planner_tokens.repeat_interleave(candidates, dim=0)  # [E K, A]

    def first_token(j: int, logits: torch.Tensor) -> torch.Tensor:
        token = sample(logits, generator, cfg.k_act, cfg.cdf_act)
        token = torch.where(kind == MEDIAN, median(logits), token)
        return torch.where(kind == PLANNER, forced[:, j].to(token.dtype), token)
    out = imagine(model, discretizer, layout, replace(cfg, beam_steps=1), context, candidates,
                  first_token, generator)  # one transition: Q = reward + discount * value
    return (out["actions"][:, 0].view(envs, candidates, -1), out["rewards"][:, 0].view(envs, candidates),
            out["score"].view(envs, candidates))


@torch.no_grad()
def realised_returns(model, discretizer, layout, policy_cfg: EvalConfig, env_id: str,
                     pool: list, states: list, history: History, obs: np.ndarray,
                     candidate_tokens: np.ndarray, horizon: int, discount: float,
                     context_transitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate taken from its env's state, then the median policy: the discounted return over
    ``horizon`` steps and the first step's reward, both [E, K]. ``pool`` holds E * K environments;
    ``states`` the E simulator states; ``history`` the E envs' token history so far."""
    envs, k, a = candidate_tokens.shape
    o = layout.obs_dim
    n = envs * k
    for i, env in enumerate(pool):
        env.reset(seed=i)
        env.unwrapped.set_state(*states[i // k])
    past = min(history.length, context_transitions)
    branch = History(n, past + horizon, layout)
    branch.tokens[:, :past] = np.repeat(history.tokens[:, history.length - past:history.length], k, axis=0)
    branch.length = past
    planner = PolicyPlanner(model, discretizer, layout, policy_cfg)
    current = np.repeat(obs, k, axis=0)
    returns, first_reward = np.zeros(n), np.zeros(n)
    active = np.ones(n, dtype=bool)
    dims = slice(o, o + a)
    for h in range(horizon):
        rows = np.flatnonzero(active)
        obs_tokens = discretizer.encode(current[rows], dims=slice(0, o))
        if h == 0:
            act_tokens = candidate_tokens.reshape(n, a)[rows]
            actions = discretizer.decode(act_tokens, dims=dims).astype(np.float32)
        else:
            context = branch.context(rows, obs_tokens, context_transitions)
            plan = planner.plan(torch.as_tensor(context))
            act_tokens, actions = plan_actions(plan, discretizer, o)
        rewards = np.zeros(len(rows))
        for j, i in enumerate(rows):
            current[i], rewards[j], terminated, _, _ = pool[i].step(actions[j])
            if terminated:  # a fall ends the episode: nothing more is earned
                active[i] = False
        returns[rows] += discount ** h * rewards
        if h == 0:
            first_reward[rows] = rewards
        branch.append(rows, transition_tokens(discretizer, layout, obs_tokens, act_tokens, rewards))
        branch.advance()
        if not active.any():
            break
    return returns.reshape(envs, k), first_reward.reshape(envs, k)


@torch.no_grad()
def imagined_returns(model, discretizer, layout, cfg: EvalConfig, context: torch.Tensor,
                     tokens: torch.Tensor, horizon: int, generator: torch.Generator) -> np.ndarray:
    """Each candidate [E, K, A] followed by the model's median policy for ``horizon`` transitions
    in the model (:func:`planners.imagine.imagine`): its discounted predicted rewards plus the
    discounted value after them, [E, K]."""
    envs, k, _ = tokens.shape
    forced = tokens.reshape(envs * k, -1)
    out = imagine(model, discretizer, layout, replace(cfg, beam_steps=horizon), context, k,
                  lambda j, logits: forced[:, j].to(logits.device), generator)
    return out["score"].view(envs, k).cpu().numpy()


def nudged(state: tuple[np.ndarray, np.ndarray], scale: float, rng: np.random.Generator):
    """The simulator state with every joint velocity moved by ``scale`` x N(0, 1) (HalfCheetah's
    reset draws them with scale 0.1)."""
    qpos, qvel = state
    return qpos, qvel + scale * rng.standard_normal(qvel.shape)


def nudged_measures(nudged_q: np.ndarray, q_real: np.ndarray) -> dict:
    """How far the realised ranking of one state's candidates survives a minute change of the state:
    the ceiling of any ranker that cannot see below that scale."""
    return {"nudged_rank_correlation": spearman(nudged_q, q_real),
            "gain_nudged_choice": float(q_real[np.argmax(nudged_q)] - q_real[MEDIAN])}


def imagined_measures(imagined: np.ndarray, q_real: np.ndarray) -> dict:
    """One state's candidates scored by imagined rollouts [K] against their realised Q [K]."""
    return {"imagined_rank_correlation": spearman(imagined, q_real),
            "gain_imagined_choice": float(q_real[np.argmax(imagined)] - q_real[MEDIAN])}


def critic_measures(critic_q: np.ndarray, q_real: np.ndarray) -> dict:
    """One state's candidates valued by the run's critic [K] against their realised Q [K]."""
    return {"critic_rank_correlation": spearman(critic_q, q_real),
            "gain_critic_choice": float(q_real[np.argmax(critic_q)] - q_real[MEDIAN])}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation of two vectors (average ranks for ties); NaN when either is constant."""
    def ranks(v):
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their average rank
            same = v == value
            r[same] = r[same].mean()
        return r
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def state_measures(q_model: np.ndarray, q_real: np.ndarray, r_model: np.ndarray,
                   r_real: np.ndarray) -> dict:
    """One state's candidates ([K] each) -> its correlations and gains over the median action."""
    drawn = slice(PLANNER + 1, None)
    return {"rank_correlation": spearman(q_model, q_real),
            "reward_rank_correlation": spearman(r_model, r_real),
            "gain_model_choice": float(q_real[np.argmax(q_model)] - q_real[MEDIAN]),
            "gain_planner": float(q_real[PLANNER] - q_real[MEDIAN]),
            "gain_drawn": float(q_real[drawn].mean() - q_real[MEDIAN]),
            "gain_best": float(q_real.max() - q_real[MEDIAN]),
            "realised_spread": float(q_real.std()), "predicted_spread": float(q_model.std())}


def mean_and_sem(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0


def measure(checkpoint_path: str, args, overrides: dict) -> dict:
    cfg = build_config(EvalConfig, None, [f"checkpoints_path={checkpoint_path}", "planner=beam",
                                          f"seed={args.seed}", f"n_episodes={args.envs}", *args.set])
    policy_cfg = EvalConfig(checkpoints_path=checkpoint_path, planner="policy", policy_actions="median")
    checkpoint, model = load_for_eval(cfg, torch.device("cpu"))
    env_id = resolve_env_id(cfg, checkpoint)
    discretizer, layout = checkpoint.discretizer, checkpoint.layout
    o = layout.obs_dim
    generator = torch.Generator().manual_seed(args.seed)
    beam = build_planner(model, discretizer, layout, cfg, generator)
    policy = PolicyPlanner(model, discretizer, layout, policy_cfg)
    context_transitions = min(beam.context_transitions, policy.context_transitions)
    critic_file = os.path.join(checkpoint_path, "critic", "critic.pt")  # the run's, when it has one
    critic = load_critic(critic_file) if os.path.isfile(critic_file) else None
    envs = [make_env(env_id) for _ in range(args.envs)]
    pool = [make_env(env_id) for _ in range(args.envs * args.candidates)]
    obs = np.stack([env.reset(seed=args.seed + i)[0] for i, env in enumerate(envs)])
    history = History(args.envs, max(args.times) + 1, layout)
    per_state, scatter = [], []
    times = sorted(args.times)
    from tqdm import tqdm
    bar = tqdm(total=max(times) + len(times) * args.horizon, desc=os.path.basename(checkpoint_path),
               unit="step")
    alive = np.ones(args.envs, dtype=bool)
    nudge_rng = np.random.default_rng(args.seed)
    for t in range(max(times) + 1):
        if t in times:
            rows = np.flatnonzero(alive)
            obs_tokens = discretizer.encode(obs[rows], dims=slice(0, o))
            context = torch.as_tensor(history.context(rows, obs_tokens, context_transitions))
            plan = beam.plan(context)
            tokens, reward, q = score_candidates(model, discretizer, layout, cfg, context,
                                                 plan.actions[:, 0], args.candidates, generator)
            imagined = imagined_returns(model, discretizer, layout, cfg, context, tokens,
                                        args.model_horizon, generator)
            sub = History(len(rows), history.tokens.shape[1], layout)
            sub.tokens[:] = history.tokens[rows]
            sub.length = history.length
            states = [simulator_state(envs[i]) for i in rows]
            replay = dict(model=model, discretizer=discretizer, layout=layout, policy_cfg=policy_cfg,
                          env_id=env_id, pool=pool[:len(rows) * args.candidates], history=sub,
                          obs=obs[rows], candidate_tokens=tokens.numpy(), horizon=args.horizon,
                          discount=cfg.discount, context_transitions=context_transitions)
            real_q, real_r = realised_returns(states=states, **replay)
            nudged_q = None
            if args.nudge:  # the same candidates from minutely different velocities
                nudged_q, _ = realised_returns(states=[nudged(s, args.nudge, nudge_rng) for s in states],
                                               **replay)
            critic_q = None
            if critic is not None:  # as planner=critic sees them: bin centres of the tokens
                with torch.no_grad():
                    critic_q = candidate_values(
                        critic, torch.as_tensor(discretizer.decode(obs_tokens, dims=slice(0, o))),
                        torch.as_tensor(discretizer.decode(tokens.numpy(), dims=slice(o, o + layout.act_dim)))
                    ).numpy()
            for j in range(len(rows)):
                measures = state_measures(q[j].numpy(), real_q[j], reward[j].numpy(), real_r[j])
                measures.update(imagined_measures(imagined[j], real_q[j]))
                if critic_q is not None:
                    measures.update(critic_measures(critic_q[j], real_q[j]))
                if nudged_q is not None:
                    measures.update(nudged_measures(nudged_q[j], real_q[j]))
                per_state.append(measures)
                scatter.append((q[j].numpy() - q[j, MEDIAN].item(), real_q[j] - real_q[j, MEDIAN]))
            bar.update(args.horizon)
        if t == max(times):
            break
        rows = np.flatnonzero(alive)
        obs_tokens = discretizer.encode(obs[rows], dims=slice(0, o))
        plan = policy.plan(torch.as_tensor(history.context(rows, obs_tokens, context_transitions)))
        act_tokens, actions = plan_actions(plan, discretizer, o)
        rewards = np.zeros(len(rows))
        for j, i in enumerate(rows):
            obs[i], rewards[j], terminated, truncated, _ = envs[i].step(actions[j])
            alive[i] = not (terminated or truncated)
        history.append(rows, transition_tokens(discretizer, layout, obs_tokens, act_tokens, rewards))
        history.advance()
        bar.update(1)
        if not alive.any():
            break
    bar.close()
    for env in envs + pool:
        env.close()
    summary = {name: mean_and_sem(s[name] for s in per_state) for name in per_state[0]}
    return {"checkpoint": checkpoint_path, "env_id": env_id, "core": checkpoint.config.model.core,
            "tokens": checkpoint.metrics.get("tokens"), "states": len(per_state),
            "settings": {"envs": args.envs, "times": times, "candidates": args.candidates,
                         "horizon": args.horizon, "model_horizon": args.model_horizon,
                         "nudge": args.nudge,
                         "seed": args.seed, "discount": cfg.discount,
                         "planner": {k: overrides[k] for k in sorted(overrides)}},
            "summary": summary, "scatter": [(m.tolist(), r.tolist()) for m, r in scatter]}


def entry_key(entry: dict) -> str:
    s = entry["settings"]
    planner = ",".join(f"{k}={v}" for k, v in s["planner"].items())
    return (f"{entry['checkpoint']}|seed={s['seed']}|envs={s['envs']}|times={s['times']}|"
            f"K={s['candidates']}|H={s['horizon']}|M={s.get('model_horizon')}|{planner}")


def table(results: dict) -> str:
    def cell(s, name, digits=2):
        if name not in s:
            return "n/a"
        mean, sem = s[name]
        return f"{mean:.{digits}f} ± {sem:.{digits}f}"
    rows = []
    for entry in results.values():
        s, m = entry["summary"], entry["settings"]
        planner = ", ".join(f"{k}={v}" for k, v in m["planner"].items()) or "beam (TT's settings)"
        rows.append([os.path.basename(entry["checkpoint"].rstrip("/")), entry["core"],
                     f"{(entry['tokens'] or 0) / 1e6:.0f}M", entry["states"],
                     cell(s, "rank_correlation"), cell(s, "imagined_rank_correlation"),
                     cell(s, "critic_rank_correlation"),
                     cell(s, "reward_rank_correlation"), cell(s, "nudged_rank_correlation"),
                     cell(s, "gain_model_choice"), cell(s, "gain_imagined_choice"),
                     cell(s, "gain_critic_choice"),
                     cell(s, "gain_drawn"), cell(s, "gain_nudged_choice"),
                     cell(s, "gain_best"), planner,
                     cell(s, "gain_planner"),
                     f"{s['predicted_spread'][0]:.2f} / {s['realised_spread'][0]:.2f}",
                     f"{m['candidates']} x {m['horizon']} (imagined {m.get('model_horizon', 'n/a')}), "
                     f"seeds {m['seed']}+"])
    return markdown_table(
        ["run", "core", "tokens", "states", "rank corr.: one-step Q", "rank corr.: imagined",
         "rank corr.: critic", "rank corr.: first reward", "rank corr.: realised, nudged state",
         "gain: best one-step Q", "gain: best imagined", "gain: best by the critic", "gain: a draw",
         "gain: best in the nudged state", "gain: best candidate",
         "planner", "gain: planner's action", "spread of Q over candidates: predicted / realised",
         "candidates x steps"], rows)


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    entries = list(results.values())
    cols = min(4, len(entries))
    rows = -(-len(entries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(entries):]:
        ax.axis("off")
    for ax, entry in zip(axes.flat, entries):
        for predicted, realised in entry["scatter"]:
            ax.scatter(predicted[PLANNER + 1:], realised[PLANNER + 1:], s=4, alpha=0.4, color="#1f77b4")
            ax.scatter(predicted[PLANNER], realised[PLANNER], s=10, color="#d62728")
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        rho = entry["summary"]["rank_correlation"][0]
        ax.set_title(f"{os.path.basename(entry['checkpoint'].rstrip('/'))}, {entry['settings']['horizon']} "
                     f"steps: rank corr. {rho:.2f}", fontsize=9)
        ax.set_xlabel("predicted Q minus the median action's")
        ax.set_ylabel("realised return minus the median action's")
    fig.suptitle("candidate actions: the model's estimate against what happened "
                 "(red: the beam planner's action)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run folders (runs/<name>)")
    parser.add_argument("--envs", type=int, default=10)
    parser.add_argument("--times", default="100,400,700",
                        help="comma-separated env steps at which candidates are compared")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--model-horizon", type=int, default=5,
                        help="transitions each candidate is followed in the model for the imagined "
                             "estimate")
    parser.add_argument("--nudge", type=float, default=1e-3,
                        help="replay every candidate from the state with its velocities moved by "
                             "this x N(0, 1): how reproducible the realised ranking is (0: skip)")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="planner settings (eval_base.yaml keys) for the beam planner's candidate")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--readme", default=None,
                        help="the Markdown file whose 'action_ranking' block to rewrite (docs/results.md)")
    args = parser.parse_args(argv)
    try:
        args.times = [int(t) for t in args.times.split(",") if t]
    except ValueError:
        raise SystemExit(f"error: --times takes comma-separated integers, got '{args.times}'") from None
    if not args.times or min(args.times) < 0:
        raise SystemExit("error: --times needs at least one step >= 0")
    if args.candidates < 3:
        raise SystemExit("error: --candidates must be at least 3 (the median, the planner's, a draw)")
    if args.horizon < 1 or args.model_horizon < 1:
        raise SystemExit("error: --horizon and --model-horizon must be at least 1")
    for path in args.checkpoints:
        if not os.path.isdir(path):
            raise SystemExit(f"error: no run folder at {path}; train one with train.py first")
    try:  # a wrong key or value stops here, before any checkpoint is loaded
        build_config(EvalConfig, None, args.set)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    overrides = dict(item.split("=", 1) for item in args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = load_results(args.out)
    for path in args.checkpoints:
        start = time.time()
        entry = measure(path, args, overrides)
        entry["seconds"] = time.time() - start
        results[entry_key(entry)] = entry
        s = entry["summary"]
        print(f"{path}: rank correlation {s['rank_correlation'][0]:.2f} +- {s['rank_correlation'][1]:.2f}; "
              f"gain over the median action: model's best {s['gain_model_choice'][0]:.1f}, planner "
              f"{s['gain_planner'][0]:.1f}, best candidate {s['gain_best'][0]:.1f} "
              f"({entry['seconds']:.0f} s)", flush=True)
        save_json(results, args.out)  # after every checkpoint: a long run keeps what it measured
    publish(results, args.out, args.readme, "action_ranking", table)
    plot(results, args.out.replace(".json", ".png"))
    return results


if __name__ == "__main__":
    main()
