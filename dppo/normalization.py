"""Min/max normalization of observations and actions to [-1, 1].

The statistics are computed once from the demonstration dataset, saved beside
it as `normalization.npz` (keys `obs_min`, `obs_max`, `action_min`,
`action_max`), and used identically by pre-training, fine-tuning and
evaluation: the env wrapper normalizes observations and un-normalizes actions
with the very same object.

Two guards for observations the dataset did not cover:
- a dimension that is constant in the dataset (range <= CONSTANT_RANGE, e.g. the contact forces that
  gymnasium's MuJoCo envs report as zeros) maps to 0, the centre, instead of being scaled by 1 / RANGE_EPS;
- normalized observations are clipped to +-OBS_CLIP (the dataset itself spans [-1, 1]).
"""

import os

import numpy as np
import torch

from dppo.paths import atomic_write

RANGE_EPS = 1e-6
CONSTANT_RANGE = 1e-6  # a dimension whose dataset range is at most this is constant
OBS_CLIP = 5.0  # normalized observations are clipped to [-OBS_CLIP, OBS_CLIP]


def _minmax_to_unit(x, low, high):
    return 2.0 * (x - low) / (high - low + RANGE_EPS) - 1.0


def _unit_scale_offset(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x -> (x - low) * scale + offset maps [low, high] to [-1, 1], and constant dimensions to 0."""
    constant = (high - low) <= CONSTANT_RANGE
    scale = np.where(constant, 0.0, 2.0 / (high - low + RANGE_EPS)).astype(np.float32)
    offset = np.where(constant, 0.0, -1.0).astype(np.float32)
    return scale, offset


def _unit_to_minmax(x, low, high):
    return (x + 1.0) / 2.0 * (high - low + RANGE_EPS) + low


class MinMaxNormalizer:
    """Maps observations and actions between their dataset range and [-1, 1].

    Works on numpy arrays and torch tensors whose last dim is the feature dim
    (obs: (..., Do), actions: (..., Da)).
    """

    KEYS = ("obs_min", "obs_max", "action_min", "action_max")

    def __init__(self, obs_min, obs_max, action_min, action_max):
        self.stats = {
            "obs_min": np.asarray(obs_min, dtype=np.float32),
            "obs_max": np.asarray(obs_max, dtype=np.float32),
            "action_min": np.asarray(action_min, dtype=np.float32),
            "action_max": np.asarray(action_max, dtype=np.float32),
        }
        # fixed by the statistics: computed once here, not on every env step
        self.obs_scale, self.obs_offset = _unit_scale_offset(self.stats["obs_min"], self.stats["obs_max"])

    @classmethod
    def from_data(cls, states: np.ndarray, actions: np.ndarray) -> "MinMaxNormalizer":
        """Statistics of states (N, Do) and actions (N, Da)."""
        return cls(states.min(0), states.max(0), actions.min(0), actions.max(0))

    @classmethod
    def load(cls, path: str) -> "MinMaxNormalizer":
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Normalization file {path} not found: it is written beside the dataset when the dataset is first "
                "loaded; run pre-training on that dataset or point normalization_path to the right file."
            )
        with np.load(path) as data:
            missing = [k for k in cls.KEYS if k not in data]
            if missing:
                raise ValueError(f"Normalization file {path} lacks {missing}: delete it and reload the dataset to rewrite it.")
            return cls(*(data[k] for k in cls.KEYS))

    def save(self, path: str) -> None:
        """Write the statistics to `path` (.npz) atomically: concurrent jobs may write the same file."""
        with atomic_write(path, "wb") as f:
            np.savez(f, **self.stats)

    @property
    def obs_dim(self) -> int:
        return int(self.stats["obs_min"].shape[-1])

    @property
    def action_dim(self) -> int:
        return int(self.stats["action_min"].shape[-1])

    def _bounds(self, kind: str, like):
        low, high = self.stats[f"{kind}_min"], self.stats[f"{kind}_max"]
        if isinstance(like, torch.Tensor):
            return (torch.as_tensor(low, dtype=like.dtype, device=like.device),
                    torch.as_tensor(high, dtype=like.dtype, device=like.device))
        return low, high

    def normalize_obs(self, obs):
        """(..., Do) -> [-1, 1] over the dataset's range, constant dimensions at 0, clipped to +-OBS_CLIP."""
        low, _ = self._bounds("obs", obs)
        scale, offset = self.obs_scale, self.obs_offset
        if isinstance(obs, torch.Tensor):
            scale = torch.as_tensor(scale, dtype=obs.dtype, device=obs.device)
            offset = torch.as_tensor(offset, dtype=obs.dtype, device=obs.device)
            return ((obs - low) * scale + offset).clamp(-OBS_CLIP, OBS_CLIP)
        return np.clip((obs - low) * scale + offset, -OBS_CLIP, OBS_CLIP)

    def unnormalize_obs(self, obs):
        return _unit_to_minmax(obs, *self._bounds("obs", obs))

    def normalize_action(self, action):
        return _minmax_to_unit(action, *self._bounds("action", action))

    def unnormalize_action(self, action):
        return _unit_to_minmax(action, *self._bounds("action", action))
