"""Stitched sequence dataset: windows of observations and action chunks that never cross an episode.

The npz file holds `states` (N, Do), `actions` (N, Da), `traj_lengths` (E,)
(episodes stored back to back) and optionally `images` (N, C, H, W). A window
starting at step i of an episode gives the observations of steps
i - To + 1 .. i (the episode's first observation repeated before its start)
and the actions of steps i .. i + Ta - 1, all inside the episode. With
`pad_after` = P, windows also start at the P steps after the last full one,
their actions past the episode's end repeating its last action (Diffusion
Policy's padding): without it the last Ta - 1 states of every episode never
condition a window, which long chunks on short episodes cannot afford.
"""

import os

import numpy as np
import torch

from dppo.normalization import MinMaxNormalizer


def normalization_path_for(dataset_path: str) -> str:
    """Where the normalization statistics of a dataset live: beside it."""
    return os.path.join(os.path.dirname(os.path.abspath(dataset_path)), "normalization.npz")


def load_npz_dataset(dataset_path: str, make_command: str | None = None) -> dict:
    """Arrays of a dataset file, with a one-line error naming the command that makes a missing one."""
    if not os.path.isfile(dataset_path):
        hint = f"make it with `{make_command}`" if make_command else "point dataset_path to an existing file"
        raise FileNotFoundError(f"Dataset {dataset_path} not found: {hint}.")
    with np.load(dataset_path, allow_pickle=False) as data:
        missing = [key for key in ("states", "actions", "traj_lengths") if key not in data]
        if missing:
            raise ValueError(f"Dataset {dataset_path} lacks {missing}: convert it with script/dataset/convert_d4rl.py.")
        return {key: data[key] for key in data.files}


def write_normalization(states: np.ndarray, actions: np.ndarray, path: str) -> MinMaxNormalizer:
    """Compute min/max statistics of the whole dataset and (re)write them at `path` when they changed."""
    normalizer = MinMaxNormalizer.from_data(states, actions)
    if os.path.isfile(path):
        saved = MinMaxNormalizer.load(path)
        if all(np.allclose(saved.stats[k], normalizer.stats[k]) for k in MinMaxNormalizer.KEYS):
            return saved
        print(f"Dataset statistics changed: rewriting {path} (checkpoints trained on the old data no longer match).")
    normalizer.save(path)
    return normalizer


class StitchedSequenceDataset(torch.utils.data.Dataset):
    """Windows of `cond_steps` (To) observations and `horizon_steps` (Ta) actions, normalized to [-1, 1].

    Item i: {"actions": (Ta, Da), "cond": {"state": (To, Do)[, "rgb": (To, C, H, W)]}}.
    Statistics come from the whole file (not only the first `max_n_episodes`), so a
    shortened run never changes the normalization that checkpoints depend on.
    """

    def __init__(self, dataset_path: str, horizon_steps: int, cond_steps: int = 1, obs_dim: int | None = None,
                 action_dim: int | None = None, max_n_episodes: int | None = None, use_img: bool = False,
                 make_command: str | None = None, device: str = "cpu", pad_after: int = 0):
        data = load_npz_dataset(dataset_path, make_command)
        states, actions = data["states"].astype(np.float32), data["actions"].astype(np.float32)
        traj_lengths = data["traj_lengths"].astype(np.int64)
        _check_dims(dataset_path, states, actions, traj_lengths, obs_dim, action_dim)
        self.normalizer = write_normalization(states, actions, normalization_path_for(dataset_path))

        if max_n_episodes is not None:
            traj_lengths = traj_lengths[:max_n_episodes]
        n_steps = int(traj_lengths.sum())
        self.horizon_steps = horizon_steps
        self.cond_steps = cond_steps
        self.traj_lengths = traj_lengths
        self.obs_index, self.action_index = window_indices(traj_lengths, horizon_steps, cond_steps, pad_after)
        self.states = torch.as_tensor(self.normalizer.normalize_obs(states[:n_steps]), device=device)
        self.actions = torch.as_tensor(self.normalizer.normalize_action(actions[:n_steps]), device=device)
        self.images = None
        if use_img:
            if "images" not in data:
                raise ValueError(f"Dataset {dataset_path} has no 'images': set use_img=false or use a pixel dataset.")
            self.images = torch.as_tensor(data["images"][:n_steps], device=device)
        self.obs_index = self.obs_index.to(device)
        self.action_index = self.action_index.to(device)

    def __len__(self) -> int:
        return self.obs_index.shape[0]

    def get_batch(self, indices: torch.Tensor) -> dict:
        """Windows `indices`: (B,) -> {"actions": (B, Ta, Da), "cond": {"state": (B, To, Do), ...}}."""
        obs_index = self.obs_index[indices]
        cond = {"state": self.states[obs_index]}
        if self.images is not None:
            cond["rgb"] = self.images[obs_index]
        return {"actions": self.actions[self.action_index[indices]], "cond": cond}

    def __getitem__(self, index: int) -> dict:
        batch = self.get_batch(torch.tensor([index]))
        return {"actions": batch["actions"][0], "cond": {k: v[0] for k, v in batch["cond"].items()}}


def window_indices(traj_lengths: np.ndarray, horizon_steps: int, cond_steps: int,
                   pad_after: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Global step indices of every window: obs (W, To) and actions (W, Ta).

    Windows start at steps 0 .. length - Ta + pad_after of each episode (never past its last step);
    actions past the episode's end repeat its last action. Episodes shorter than Ta - pad_after give
    no window; observations before an episode's start repeat its first observation.
    """
    if not 0 <= pad_after < horizon_steps:
        raise ValueError(f"pad_after={pad_after} must be in 0..horizon_steps - 1 ({horizon_steps - 1}).")
    obs_rows, action_rows = [], []
    episode_start = 0
    for length in traj_lengths:
        episode_end = episode_start + int(length)
        last_start = min(episode_end - horizon_steps + pad_after, episode_end - 1)
        starts = np.arange(episode_start, last_start + 1)
        if len(starts) > 0:
            history = starts[:, None] + np.arange(-cond_steps + 1, 1)[None, :]
            obs_rows.append(np.maximum(history, episode_start))
            action_rows.append(np.minimum(starts[:, None] + np.arange(horizon_steps)[None, :], episode_end - 1))
        episode_start = episode_end
    if not obs_rows:
        raise ValueError(f"No episode is at least horizon_steps={horizon_steps} long: lower horizon_steps.")
    return torch.as_tensor(np.concatenate(obs_rows)), torch.as_tensor(np.concatenate(action_rows))


def _check_dims(path, states, actions, traj_lengths, obs_dim, action_dim):
    if obs_dim is not None and states.shape[-1] != obs_dim:
        raise ValueError(f"Dataset {path} has obs dim {states.shape[-1]} but the config says obs_dim={obs_dim}: "
                         "use the task this dataset belongs to or fix obs_dim.")
    if action_dim is not None and actions.shape[-1] != action_dim:
        raise ValueError(f"Dataset {path} has action dim {actions.shape[-1]} but the config says "
                         f"action_dim={action_dim}: use the task this dataset belongs to or fix action_dim.")
    if int(traj_lengths.sum()) != len(states) or len(states) != len(actions):
        raise ValueError(f"Dataset {path} is inconsistent: sum(traj_lengths)={int(traj_lengths.sum())}, "
                         f"{len(states)} states, {len(actions)} actions: regenerate or reconvert it.")
