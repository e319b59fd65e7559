"""Observation history in, action chunk out: one policy call per chunk."""

from collections import deque

import gymnasium as gym
import numpy as np


class MultiStep(gym.Wrapper):
    """Stacks the last `n_obs_steps` observations and runs `n_action_steps` actions per step.

    Observation: (To, Do) float32, oldest first; at reset the first observation
    is repeated To times. Action: a chunk (act_steps, Da) executed in order; the
    chunk stops early when the episode terminates or truncates.

    `step` returns the history after the last executed action, the summed
    reward, and the `info` of the last executed step plus
    `info["n_executed"]` (simulator steps run) and, when the inner env reports
    it, `info["sim_error"]` summed over the chunk.
    """

    def __init__(self, env: gym.Env, n_obs_steps: int, n_action_steps: int):
        super().__init__(env)
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(f"n_obs_steps ({n_obs_steps}) and n_action_steps ({n_action_steps}) must be >= 1.")
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        obs_space, action_space = env.observation_space, env.action_space
        self.observation_space = gym.spaces.Box(
            low=np.repeat(obs_space.low[None], n_obs_steps, axis=0).astype(np.float32),
            high=np.repeat(obs_space.high[None], n_obs_steps, axis=0).astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = gym.spaces.Box(
            low=np.repeat(action_space.low[None], n_action_steps, axis=0),
            high=np.repeat(action_space.high[None], n_action_steps, axis=0),
            dtype=action_space.dtype,
        )
        self._history = deque(maxlen=n_obs_steps)

    def _stacked(self) -> np.ndarray:
        """(To, Do) float32."""
        return np.stack(self._history).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._history.extend([obs] * self.n_obs_steps)
        return self._stacked(), info

    def step(self, action):
        """action: (act_steps, Da). Returns obs (To, Do), summed reward, terminated, truncated, info."""
        total_reward, sim_errors = 0.0, 0
        for n_executed, single_action in enumerate(np.asarray(action), start=1):
            obs, reward, terminated, truncated, info = self.env.step(single_action)
            self._history.append(obs)
            total_reward += float(reward)
            sim_errors += info.get("sim_error", 0)
            if terminated or truncated:
                break
        info = {**info, "n_executed": n_executed}
        if "sim_error" in info:
            info["sim_error"] = sim_errors
        return self._stacked(), total_reward, terminated, truncated, info
