"""Let the policy see and act in [-1, 1] while the simulator keeps its own units."""

import gymnasium as gym
import numpy as np

from dppo.normalization import MinMaxNormalizer


class NormalizeObsAction(gym.Wrapper):
    """Normalizes obs["state"] (..., Do) to [-1, 1] float32 (other keys, e.g. "rgb", pass unchanged) and
    un-normalizes actions (..., Da) from [-1, 1] to the env's units before `env.step`. Outside `MultiStep` it
    works on whole histories (To, Do) and chunks (Ta, Da), once per chunk.

    Uses the same `MinMaxNormalizer` as the dataset the policy was trained on.
    """

    def __init__(self, env: gym.Env, normalizer: MinMaxNormalizer):
        super().__init__(env)
        state_shape, action_shape = env.observation_space["state"].shape, env.action_space.shape
        if (normalizer.obs_dim, normalizer.action_dim) != (state_shape[-1], action_shape[-1]):
            raise ValueError(
                f"Normalization statistics have obs/action dims ({normalizer.obs_dim}, {normalizer.action_dim}) but "
                f"the env has ({state_shape[-1]}, {action_shape[-1]}): the normalization file is from another task."
            )
        self.normalizer = normalizer
        self.observation_space = gym.spaces.Dict({
            **env.observation_space.spaces,
            "state": gym.spaces.Box(-np.inf, np.inf, shape=state_shape, dtype=np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=action_shape, dtype=np.float32)

    def _normalize(self, obs: dict) -> dict:
        state = self.normalizer.normalize_obs(np.asarray(obs["state"], dtype=np.float32)).astype(np.float32)
        return {**obs, "state": state}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._normalize(obs), info

    def step(self, action):
        env_action = self.normalizer.unnormalize_action(np.asarray(action, dtype=np.float32))
        obs, reward, terminated, truncated, info = self.env.step(env_action.astype(self.env.action_space.dtype))
        return self._normalize(obs), reward, terminated, truncated, info
