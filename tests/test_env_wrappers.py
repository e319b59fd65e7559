"""Single-env wrappers: simulator guard, normalization, multi-step, video."""

import importlib.util
import os

import gymnasium as gym
import numpy as np
import pytest

from dppo.normalization import MinMaxNormalizer
from env.gym_locomotion import StateDictObservation
from env.wrappers import video
from env.wrappers.guard import SimulatorGuard
from env.wrappers.multi_step import MultiStep
from env.wrappers.normalization import NormalizeObsAction
from env.wrappers.video import VideoRecorder


class CountingEnv(gym.Env):
    """obs = [t, 10 t] after t steps; reward 1 per step; terminates at step `terminate_at`."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
    action_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, terminate_at: int | None = None, fail_at: int | None = None, failure: str = "nan"):
        self.terminate_at, self.fail_at, self.failure = terminate_at, fail_at, failure
        self.render_mode = "rgb_array"
        self.t = 0
        self.actions = []

    def _obs(self):
        return np.array([self.t, 10.0 * self.t])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.actions.append(np.array(action))
        if self.t == self.fail_at:
            if self.failure == "raise":
                raise RuntimeError("simulator exploded")
            if self.failure == "nan_reward":
                return self._obs(), float("nan"), False, False, {}
            return np.full(2, np.nan), 1.0, False, False, {}
        return self._obs(), 1.0, self.t == self.terminate_at, False, {"t": self.t}

    def render(self):
        return np.full((16, 16, 3), self.t, dtype=np.uint8)


class NaNResetEnv(CountingEnv):
    def reset(self, *, seed=None, options=None):
        return np.full(2, np.nan), {}


@pytest.mark.parametrize("failure", ["nan", "nan_reward", "raise"])
def test_guard_turns_failed_step_into_truncation(failure):
    env = SimulatorGuard(CountingEnv(fail_at=2, failure=failure))
    env.reset()
    obs, reward, terminated, truncated, info = env.step(np.zeros(1))
    assert (obs, reward, terminated, truncated, info["sim_error"]) == (pytest.approx([1, 10]), 1.0, False, False, 0)

    obs, reward, terminated, truncated, info = env.step(np.zeros(1))
    np.testing.assert_array_equal(obs, [1, 10])  # last finite observation
    assert (reward, terminated, truncated, info) == (0.0, False, True, {"sim_error": 1})


def test_guard_raises_after_repeated_nan_resets():
    with pytest.raises(RuntimeError, match="non-finite observation on 3 resets"):
        SimulatorGuard(NaNResetEnv()).reset()


def test_guard_lets_usage_errors_through():
    env = SimulatorGuard(gym.wrappers.OrderEnforcing(CountingEnv()))
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(1))


def test_normalization_round_trip():
    normalizer = MinMaxNormalizer(obs_min=[0.0, 0.0], obs_max=[4.0, 40.0], action_min=[-2.0], action_max=[1.0])
    inner = CountingEnv()
    env = NormalizeObsAction(StateDictObservation(inner), normalizer)
    assert env.observation_space["state"] == gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    obs, _ = env.reset()
    assert obs["state"].dtype == np.float32
    np.testing.assert_allclose(obs["state"], [-1.0, -1.0], atol=1e-5)
    obs, *_ = env.step(np.array([1.0], dtype=np.float32))
    np.testing.assert_allclose(normalizer.unnormalize_obs(obs["state"]), [1.0, 10.0], atol=1e-4)
    np.testing.assert_allclose(obs["state"], [-0.5, -0.5], atol=1e-5)
    np.testing.assert_allclose(inner.actions[-1], [1.0], atol=1e-5)  # +1 -> action_max
    env.step(np.array([-1.0], dtype=np.float32))
    np.testing.assert_allclose(inner.actions[-1], [-2.0], atol=1e-5)
    assert inner.actions[-1].dtype == np.float32


def test_normalization_rejects_stats_of_another_task():
    normalizer = MinMaxNormalizer(np.zeros(3), np.ones(3), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="from another task"):
        NormalizeObsAction(StateDictObservation(CountingEnv()), normalizer)


def test_multi_step_spaces_and_history():
    env = MultiStep(StateDictObservation(CountingEnv()), cond_steps=3, act_steps=2)
    state_space = env.observation_space["state"]
    assert state_space.shape == (3, 2) and state_space.dtype == np.float32
    assert env.action_space.shape == (2, 1)
    np.testing.assert_array_equal(env.action_space.high, [[2.0], [2.0]])

    obs, _ = env.reset()
    assert obs["state"].dtype == np.float32
    np.testing.assert_array_equal(obs["state"][:, 0], [0, 0, 0])  # first obs repeated To times
    obs, reward, terminated, truncated, info = env.step(np.array([[0.1], [0.2]]))
    np.testing.assert_array_equal(obs["state"][:, 0], [0, 1, 2])  # oldest first
    assert (reward, terminated, truncated, info["n_executed"], info["t"]) == (2.0, False, False, 2, 2)
    np.testing.assert_allclose(np.concatenate(env.unwrapped.actions), [0.1, 0.2])  # executed in order
    obs, *_ = env.step(np.zeros((2, 1)))
    np.testing.assert_array_equal(obs["state"][:, 0], [2, 3, 4])


class PixelSuccessEnv(CountingEnv):
    """CountingEnv with a (3, 4, 4) uint8 image of value t and info["success"] true at step `succeed_at` only."""

    def __init__(self, succeed_at: int):
        super().__init__()
        self.succeed_at = succeed_at
        self.observation_space = gym.spaces.Dict({
            "state": gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32),
            "rgb": gym.spaces.Box(0, 255, shape=(3, 4, 4), dtype=np.uint8),
        })

    def _obs(self):
        return {"state": super()._obs().astype(np.float32), "rgb": np.full((3, 4, 4), self.t, dtype=np.uint8)}

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "success": self.t == self.succeed_at}


def test_multi_step_stacks_every_key_in_its_dtype_and_reports_success_of_any_step():
    env = MultiStep(PixelSuccessEnv(succeed_at=2), cond_steps=2, act_steps=3)
    assert env.observation_space["rgb"].shape == (2, 3, 4, 4) and env.observation_space["rgb"].dtype == np.uint8
    obs, _ = env.reset()
    assert obs["rgb"].dtype == np.uint8 and obs["rgb"].shape == (2, 3, 4, 4)
    obs, _, _, _, info = env.step(np.zeros((3, 1)))
    assert obs["rgb"][:, 0, 0, 0].tolist() == [2, 3] and obs["state"][:, 0].tolist() == [2, 3]
    assert info["success"] is True  # step 2 of the chunk succeeded, step 3 did not
    _, _, _, _, info = env.step(np.zeros((3, 1)))
    assert info["success"] is False


def test_multi_step_stops_chunk_when_episode_ends():
    env = MultiStep(StateDictObservation(CountingEnv(terminate_at=3)), cond_steps=2, act_steps=4)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(np.zeros((4, 1)))
    assert (reward, terminated, truncated, info["n_executed"]) == (3.0, True, False, 3)
    np.testing.assert_array_equal(obs["state"][:, 0], [2, 3])  # history after the last executed action
    assert env.unwrapped.t == 3


def test_multi_step_sums_sim_errors_and_stops_on_truncation():
    env = MultiStep(SimulatorGuard(StateDictObservation(CountingEnv(fail_at=2))), cond_steps=2, act_steps=4)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(np.zeros((4, 1)))
    assert (reward, terminated, truncated, info["n_executed"], info["sim_error"]) == (1.0, False, True, 2, 1)
    np.testing.assert_array_equal(obs["state"][:, 0], [1, 1])


def test_video_recorder_collects_one_frame_per_sim_step(tmp_path, monkeypatch):
    monkeypatch.setattr(VideoRecorder, "_write", lambda self: pytest.fail("episode has not ended"))
    env = MultiStep(VideoRecorder(StateDictObservation(CountingEnv(terminate_at=10)), str(tmp_path)), cond_steps=1,
                    act_steps=3)
    env.reset()
    env.step(np.zeros((3, 1)))
    env.step(np.zeros((3, 1)))
    recorder = env.env
    assert [int(frame[0, 0, 0]) for frame in recorder.frames] == [0, 1, 2, 3, 4, 5, 6]


def test_video_recorder_stops_after_max_episodes(tmp_path, monkeypatch):
    written = []

    def fake_write(self):
        written.append(len(self.frames))
        self.n_recorded += 1

    monkeypatch.setattr(VideoRecorder, "_write", fake_write)
    env = VideoRecorder(CountingEnv(terminate_at=2), str(tmp_path), max_episodes=1)
    for _ in range(2):
        env.reset()
        env.step(np.zeros(1))
        env.step(np.zeros(1))
    assert written == [3]
    assert env.frames == []


def test_video_recorder_needs_rgb_array_env(tmp_path):
    inner = CountingEnv()
    inner.render_mode = None
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        VideoRecorder(inner, str(tmp_path))


def test_missing_imageio_ffmpeg_names_the_fix(monkeypatch):
    monkeypatch.setattr(video.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install imageio-ffmpeg"):
        video.require_mp4_writer()


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None, reason="imageio-ffmpeg not installed")
def test_video_recorder_writes_mp4(tmp_path):
    import imageio.v3 as iio

    env = VideoRecorder(CountingEnv(terminate_at=4), str(tmp_path / "videos"), max_episodes=2)
    for _ in range(3):
        env.reset()
        for _ in range(4):
            env.step(np.zeros(1))
    assert sorted(os.listdir(tmp_path / "videos")) == ["episode_0.mp4", "episode_1.mp4"]
    frames = iio.imread(tmp_path / "videos" / "episode_0.mp4")
    assert frames.shape[0] == 5 and frames.shape[-1] == 3
