"""Gymnasium MuJoCo locomotion tasks (v5).

The paper used the v2 environments, which need mujoco-py; this project runs
gymnasium's v5 versions on mujoco 3.x. Returns are close but not identical to
v2 numbers: say so wherever they are compared with the paper.
"""

import gymnasium as gym

GYM_ENV_IDS = {
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "halfcheetah": "HalfCheetah-v5",
}

# D4RL's reference returns (random, expert) for the v2 envs, used to state
# demonstration quality and normalized scores.
D4RL_REFERENCE_RETURNS = {
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "halfcheetah": (-280.178953, 12135.0),
}


def gym_env_id(task: str) -> str:
    """Gymnasium id of a locomotion task name, e.g. 'hopper' -> 'Hopper-v5'; a registered gymnasium id passes as is."""
    if task in GYM_ENV_IDS:
        return GYM_ENV_IDS[task]
    if task in GYM_ENV_IDS.values() or task in gym.registry:
        return task
    known = ", ".join(sorted(GYM_ENV_IDS))
    raise ValueError(f"Unknown Gym task '{task}': use one of {known}, or a registered gymnasium env id.")


def make_gym_env(task: str, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """One gymnasium locomotion env with its standard 1000-step time limit."""
    env = gym.make(gym_env_id(task), render_mode=render_mode)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
