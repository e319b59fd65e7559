"""Observation history in, action chunk out: one policy call per chunk."""

from collections import deque

import gymnasium as gym
import numpy as np


def _stacked_space(space: gym.spaces.Box, n_steps: int) -> gym.spaces.Box:
    """A Box of shape (...) -> the Box of `n_steps` stacked values (n_steps, ...), same dtype."""
    return gym.spaces.Box(
        low=np.repeat(np.asarray(space.low)[None], n_steps, axis=0),
        high=np.repeat(np.asarray(space.high)[None], n_steps, axis=0),
        dtype=space.dtype,
    )


class MultiStep(gym.Wrapper):
    """Stacks the last `cond_steps` observations and runs `act_steps` actions per step.

    Observation: a dict of the env's keys, each stacked oldest first: "state" (To, Do) float32,
    "rgb" (To, C, H, W) uint8 for pixel tasks; at reset the first observation is repeated To times.
    Action: a chunk (act_steps, Da) executed in order; the chunk stops early when the episode
    terminates or truncates.

    `step` returns the history after the last executed action, the summed reward, and the `info`
    of the last executed step plus `info["n_executed"]` (simulator steps run) and, when the inner
    env reports them, `info["sim_error"]` summed over the chunk and `info["success"]`, true when any
    executed step succeeded.
    """

    def __init__(self, env: gym.Env, cond_steps: int, act_steps: int):
        super().__init__(env)
        if cond_steps < 1 or act_steps < 1:
            raise ValueError(f"cond_steps ({cond_steps}) and act_steps ({act_steps}) must be >= 1.")
        if not isinstance(env.observation_space, gym.spaces.Dict):
            raise TypeError(f"MultiStep takes dict observations, got {env.observation_space}: build the env with "
                            "env.families.make_family_env.")
        self.cond_steps = cond_steps
        self.act_steps = act_steps
        self.observation_space = gym.spaces.Dict(
            {key: _stacked_space(space, cond_steps) for key, space in env.observation_space.spaces.items()}
        )
        self.action_space = _stacked_space(env.action_space, act_steps)
        self._history = deque(maxlen=cond_steps)

    def _stacked(self) -> dict:
        """{key: (To, ...)} in each key's dtype."""
        spaces = self.observation_space.spaces
        return {key: np.stack([obs[key] for obs in self._history]).astype(spaces[key].dtype) for key in spaces}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._history.extend([obs] * self.cond_steps)
        return self._stacked(), info

    def step(self, action):
        """action: (act_steps, Da). Returns obs {key: (To, ...)}, summed reward, terminated, truncated, info."""
        total_reward, sim_errors, success = 0.0, 0, False
        for n_executed, single_action in enumerate(np.asarray(action), start=1):
            obs, reward, terminated, truncated, info = self.env.step(single_action)
            self._history.append(obs)
            total_reward += float(reward)
            sim_errors += info.get("sim_error", 0)
            success = success or bool(info.get("success", False))
            if terminated or truncated:
                break
        info = {**info, "n_executed": n_executed}
        if "sim_error" in info:
            info["sim_error"] = sim_errors
        if "success" in info:
            info["success"] = success
        return self._stacked(), total_reward, terminated, truncated, info
