"""Keep a run alive when the simulator fails on one step.

A physics simulator can blow up (NaN/inf state) or raise on a rare step. The
guard turns such a step into a truncation: the episode ends at its last good
observation, which the learner bootstraps from, and the vector env's
auto-reset starts a new episode. Every such event is reported in
`info["sim_error"]` so the run can count them.
"""

import logging

import gymnasium as gym
import numpy as np

logger = logging.getLogger(__name__)

MAX_RESET_TRIES = 3


def _is_finite(x) -> bool:
    """Whether an observation (an array or a dict of arrays, e.g. {"state", "rgb"}) or a reward is finite."""
    if isinstance(x, dict):
        return all(_is_finite(value) for value in x.values())
    return bool(np.all(np.isfinite(x)))


class SimulatorGuard(gym.Wrapper):
    """Innermost wrapper around a raw simulator env.

    A step that raises, or returns a non-finite observation or reward, becomes
    `(last finite obs, 0.0, terminated=False, truncated=True,
    {"sim_error": 1})`. Normal steps carry `info["sim_error"] = 0`.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._last_obs = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        for attempt in range(MAX_RESET_TRIES):
            obs, info = self.env.reset(seed=seed if attempt == 0 else None, options=options)
            if _is_finite(obs):
                self._last_obs = obs
                return obs, info
        raise RuntimeError(
            f"{self.env} returned a non-finite observation on {MAX_RESET_TRIES} resets in a row: "
            "the simulator is broken, check its installation and model files."
        )

    def step(self, action):
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except gym.error.Error:
            raise  # a usage error (e.g. step before reset), not a simulator failure
        except Exception as exc:
            logger.warning("Simulator step raised %r: truncating the episode.", exc)
            return self._failed_step()
        if not (_is_finite(obs) and _is_finite(reward)):
            logger.warning("Simulator returned a non-finite observation or reward: truncating the episode.")
            return self._failed_step()
        self._last_obs = obs
        return obs, reward, terminated, truncated, {**info, "sim_error": 0}

    def _failed_step(self):
        # The simulator's own info may hold the same NaNs: drop it.
        return self._last_obs, 0.0, False, True, {"sim_error": 1}
