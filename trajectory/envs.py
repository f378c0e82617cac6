"""Gymnasium environment factory and D4RL's normalized score."""
from __future__ import annotations

import numpy as np

# D4RL's reference returns (random and expert policies) for the normalized score
#   score = 100 * (return - random) / (expert - random)
# taken from D4RL's infos (Fu et al., 2020); v2 datasets use the same references.
REF_RETURNS = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}

_ENV_FAMILY = {"HalfCheetah": "halfcheetah", "Hopper": "hopper", "Walker2d": "walker2d"}


def env_family(env_id: str) -> str:
    """'HalfCheetah-v5' -> 'halfcheetah' (the key of :data:`REF_RETURNS`)."""
    name = env_id.split("/")[-1].split("-")[0]
    if name in _ENV_FAMILY:
        return _ENV_FAMILY[name]
    if name.lower() in REF_RETURNS:
        return name.lower()
    raise ValueError(f"no D4RL reference returns for env '{env_id}'; known: {sorted(REF_RETURNS)}")


def has_reference_returns(env_id: str) -> bool:
    """Whether D4RL reference returns (hence normalized scores) exist for ``env_id``."""
    try:
        env_family(env_id)
        return True
    except ValueError:
        return False


def normalized_score(env_id: str, returns) -> np.ndarray:
    """D4RL normalized score (0 = random policy, 100 = expert) of raw episode returns."""
    low, high = REF_RETURNS[env_family(env_id)]
    return 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)


def _silence_mujoco_warnings() -> None:
    # mujoco 4 warns (and appends to MUJOCO_LOG.TXT in the cwd) on every HalfCheetah creation.
    try:
        import mujoco
        if hasattr(mujoco, "set_mju_user_warning"):
            mujoco.set_mju_user_warning(lambda msg: None)
    except ImportError:
        pass


def make_env(env_id: str = "HalfCheetah-v5", **kwargs):
    """Create one gymnasium environment (with its registered time limit)."""
    import gymnasium as gym
    _silence_mujoco_warnings()
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as err:
        raise ValueError(f"cannot create environment '{env_id}': {err}. HalfCheetah-v5 needs "
                         f"'gymnasium[mujoco]' (pip install -e .)") from None


# The MuJoCo locomotion models define a camera named "track" that follows the torso; gymnasium's
# default free camera stays where the episode started, so a running agent leaves the picture.
_TRACKING_CAMERA = {"halfcheetah": "track", "hopper": "track", "walker2d": "track"}


def render_kwargs(env_id: str) -> dict:
    """``make_env`` arguments for filming ``env_id``: RGB frames from a camera that follows the
    agent where the model has one."""
    kwargs = {"render_mode": "rgb_array"}
    try:
        camera = _TRACKING_CAMERA.get(env_family(env_id))
    except ValueError:
        camera = None
    if camera:
        kwargs["camera_name"] = camera
    return kwargs


# Observation index of the torso's pitch angle (qpos[2], "rooty", after gymnasium drops the x
# position): the same in HalfCheetah, Hopper and Walker2d.
_TORSO_ANGLE_INDEX = {"halfcheetah": 1, "hopper": 1, "walker2d": 1}


def torso_flipped(angles):
    """Whether a torso pitch (radians, array or scalar) is past 90 degrees either way: a cheetah on
    its back, a failed episode (``trajectory.score_stats.failed_episodes``)."""
    return np.abs(angles) > np.pi / 2


def simulator_state(env) -> tuple[np.ndarray, np.ndarray]:
    """A copy of a MuJoCo env's joint positions and velocities: what ``env.unwrapped.set_state``
    takes to put another copy of the env in the same state (the locomotion tasks have no other)."""
    data = env.unwrapped.data
    return data.qpos.copy(), data.qvel.copy()


def torso_angle_index(env_id: str) -> int | None:
    """Where the torso's pitch (radians) sits in ``env_id``'s observation; None when unknown."""
    try:
        return _TORSO_ANGLE_INDEX.get(env_family(env_id))
    except ValueError:
        return None
