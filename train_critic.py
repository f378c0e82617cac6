"""Train the action-value critic of a trajectory-model run (implicit Q-learning on its dataset), which
``eval.py planner=critic`` uses to rank the model's candidate actions.

    python train_critic.py run=runs/halfcheetah-medium-s5-cpu [steps=200000] [expectile=0.7]
"""
import sys

from trajectory.cli import run
from trajectory.training.critic import CriticRunConfig

EXAMPLES = """
python train_critic.py run=runs/halfcheetah-medium-s5-cpu
python train_critic.py run=runs/halfcheetah-medium-s5-cpu steps=100000 threads=2 overwrite=true
python train_critic.py run=runs/halfcheetah-medium-s5-cpu resume=true
"""


def _train(cfg: CriticRunConfig):
    from trajectory.training.critic import critic_folder, train_critic
    from trajectory.training.stop_signals import stopped_note
    metrics = train_critic(cfg)
    held = metrics.get("held_out", {})
    print(f"critic: {metrics['step']} steps in {metrics['seconds'] / 60:.1f} min ({metrics['stop_reason']}); "
          + ", ".join(f"{k} {v:.3f}" for k, v in held.items()))
    if metrics["stop_reason"] == "signal":
        out = cfg.out or critic_folder(cfg.run)
        resume = f"python train_critic.py run={cfg.run}{f' out={cfg.out}' if cfg.out else ''} resume=true"
        print(stopped_note(metrics.get("signal"), metrics["step"], out, resume))


def main(argv=None) -> int:
    try:
        return run(CriticRunConfig, argv, __doc__.strip().splitlines()[0], EXAMPLES, _train)
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one: nothing half-saved
        print("interrupted: the critic's last save (if any) is as it was", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
