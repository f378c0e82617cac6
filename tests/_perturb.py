"""Imperceptible perturbations that stand in for another host's rounding.

MuJoCo and torch round differently on different CPUs (AVX2 against AVX-512) and at different batch
sizes, and a chaotic rollout turns that last bit into a different episode. A test that holds on one
host only because both sides of its comparison round the same way is fragile. Setting
``TRAJECTORY_TEST_PERTURB`` to a comma-separated list of the kinds below makes every simulator step or
matrix product in the test process differ by about 1e-7 relative, a fresh draw every call, so such a
test fails here instead of on a user's machine:

    TRAJECTORY_TEST_PERTURB=action .venv/bin/pytest -q     # every MuJoCo control, +-1e-7
    TRAJECTORY_TEST_PERTURB=state  .venv/bin/pytest -q     # every reset's initial state, +-1e-7
    TRAJECTORY_TEST_PERTURB=matmul .venv/bin/pytest -q     # every nn.Linear output, 1e-7 relative

A test that compares the same computation with itself in one process (a seeded generator run twice)
legitimately fails under these; the sweep is read by hand, not run by ``make test``.
"""
from __future__ import annotations

import os

import numpy as np

KINDS = ("action", "state", "matmul")
SCALE = 1e-7


def requested() -> list[str]:
    kinds = [k for k in os.environ.get("TRAJECTORY_TEST_PERTURB", "").split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"TRAJECTORY_TEST_PERTURB: unknown kind(s) {unknown}; choose from {KINDS}")
    return kinds


def install(kinds: list[str]) -> None:
    rng = np.random.default_rng()  # unseeded: two runs of the same rollout must not share a draw
    if "action" in kinds or "state" in kinds:
        from gymnasium.envs.mujoco import mujoco_env
        env_class = mujoco_env.MujocoEnv
    if "action" in kinds:
        simulate = env_class._step_mujoco_simulation

        def perturbed_simulation(self, ctrl, n_frames):
            ctrl = np.asarray(ctrl, dtype=np.float64)
            return simulate(self, ctrl + SCALE * rng.uniform(-1, 1, ctrl.shape), n_frames)
        env_class._step_mujoco_simulation = perturbed_simulation
    if "state" in kinds:
        reset_model = {}

        def wrap(cls):
            original = cls.reset_model
            if original in reset_model.values():
                return
            reset_model[cls] = original

            def perturbed_reset(self):
                original(self)
                qpos = self.data.qpos + SCALE * rng.uniform(-1, 1, self.data.qpos.shape)
                self.set_state(qpos, self.data.qvel.copy())
                return self._get_obs()
            cls.reset_model = perturbed_reset
        from gymnasium.envs.mujoco import half_cheetah_v5, hopper_v5, walker2d_v5
        for module in (half_cheetah_v5, hopper_v5, walker2d_v5):
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, env_class) and value is not env_class:
                    wrap(value)
    if "matmul" in kinds:
        import torch
        linear = torch.nn.functional.linear

        def perturbed_linear(input, weight, bias=None):
            out = linear(input, weight, bias)
            if out.is_floating_point() and not out.requires_grad:
                out = out * (1 + SCALE * (2 * torch.rand_like(out) - 1))
            return out
        torch.nn.functional.linear = perturbed_linear
        torch.nn.Linear.forward = lambda self, x: perturbed_linear(x, self.weight, self.bias)
