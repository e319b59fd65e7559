"""The gymnasium task family: any registered gymnasium env id (MuJoCo locomotion v5 and others).

The paper used the v2 locomotion envs, which need mujoco-py; this project runs
gymnasium's v5 versions on mujoco 3.x. Returns are close but not identical to
v2 numbers: say so wherever they are compared with the paper.

A task names its env id in its config (`env.id` in cfg/task/<task>.yaml); nothing here lists tasks.
"""

import gymnasium as gym
import numpy as np


class StateDictObservation(gym.ObservationWrapper):
    """Box observations (Do,) -> {"state": (Do,) float32}, the observation layout of every task family."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-np.inf, np.inf, shape=space.shape, dtype=np.float32)}
        )

    def observation(self, observation) -> dict:
        return {"state": np.asarray(observation, dtype=np.float32)}


def check_gym_env_id(env_id: str) -> str:
    """`env_id` when gymnasium has it registered, else a one-line ValueError naming the fix."""
    if env_id not in gym.registry:
        mujoco_ids = sorted(i for i in gym.registry if i.endswith("-v5"))
        raise ValueError(f"Unknown gymnasium env id '{env_id}': set env.id in the task config to a registered id "
                         f"(MuJoCo v5 ids: {', '.join(mujoco_ids)}).")
    return env_id


def make_gym_env(env_id: str, seed: int | None = None, render_mode: str | None = None, **make_kwargs) -> gym.Env:
    """One gymnasium env, observations as {"state": (Do,)}. `make_kwargs` go to gymnasium.make: the task's
    `max_episode_steps` (env.kwargs) sets the time limit, None keeps the registered one."""
    env = gym.make(check_gym_env_id(env_id), render_mode=render_mode, **make_kwargs)
    if not isinstance(env.observation_space, gym.spaces.Box):
        raise ValueError(f"{env_id} has {type(env.observation_space).__name__} observations: the gym task family "
                         "takes envs with one Box observation.")
    env = StateDictObservation(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
