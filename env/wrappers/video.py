"""Record the first episodes of an env as mp4 files.

Wraps the raw env (inside `MultiStep`), so each simulator step is one frame.
The env must be made with `render_mode="rgb_array"`.
"""

import importlib.util
import os

import gymnasium as gym
import imageio
import numpy as np

DEFAULT_FPS = 30


def require_mp4_writer() -> None:
    """Raise early if imageio cannot write mp4 files."""
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ImportError("Writing mp4 videos needs imageio-ffmpeg: pip install imageio-ffmpeg")


class VideoRecorder(gym.Wrapper):
    """Writes `<video_dir>/episode_<k>.mp4` for the first `max_episodes` episodes.

    Frames (H, W, 3) uint8 from `env.render()` are collected at reset and after
    each step; the file is written when the episode terminates or truncates.
    """

    def __init__(self, env: gym.Env, video_dir: str, max_episodes: int = 1):
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"VideoRecorder needs an env made with render_mode='rgb_array', got {env.render_mode!r}.")
        self.video_dir = video_dir
        self.max_episodes = max_episodes
        self.fps = env.metadata.get("render_fps", DEFAULT_FPS)
        self.frames: list[np.ndarray] = []
        self.n_recorded = 0

    @property
    def recording(self) -> bool:
        return self.n_recorded < self.max_episodes

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.frames = []
        if self.recording:
            self.frames.append(self.env.render())
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.recording:
            self.frames.append(self.env.render())
            if terminated or truncated:
                self._write()
        return obs, reward, terminated, truncated, info

    def _write(self) -> None:
        require_mp4_writer()
        os.makedirs(self.video_dir, exist_ok=True)
        path = os.path.join(self.video_dir, f"episode_{self.n_recorded}.mp4")
        imageio.mimwrite(path, self.frames, fps=self.fps)
        self.frames = []
        self.n_recorded += 1
