"""TorchVectorEnv: shapes, auto-reset and final observations, sim errors, dead workers."""

import functools
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent.eval.episodes import summarize
from agent.eval.rollout import run_episodes
from dppo.normalization import MinMaxNormalizer
from env.gym_locomotion import StateDictObservation
from env.vector import TorchVectorEnv, make_vector_env
from env.wrappers.guard import SimulatorGuard
from env.wrappers.multi_step import MultiStep


class CountingEnv(gym.Env):
    """obs = [t] after t steps; reward 1 per step; terminates at `terminate_at`, NaN obs at `nan_at`."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self, terminate_at: int | None = None, nan_at: int | None = None):
        self.terminate_at, self.nan_at = terminate_at, nan_at
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0]), {}

    def step(self, action):
        self.t += 1
        obs = np.array([np.nan if self.t == self.nan_at else float(self.t)])
        return obs, 1.0, self.t == self.terminate_at, False, {}


def make_counting_env(cond_steps=2, act_steps=3, max_episode_steps=None, **kwargs) -> gym.Env:
    env = CountingEnv(**kwargs)
    if max_episode_steps:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return MultiStep(SimulatorGuard(StateDictObservation(env)), cond_steps, act_steps)


def counting_vector_env(n_envs=2, asynchronous=False, **kwargs) -> TorchVectorEnv:
    return TorchVectorEnv([functools.partial(make_counting_env, **kwargs)] * n_envs, asynchronous=asynchronous)


def first_obs_feature(obs: dict) -> list:
    """obs["state"] (n_envs, To, 1) -> nested list of ints."""
    return obs["state"][..., 0].int().tolist()


def test_hopper_sync_shapes_and_dtypes():
    envs = make_vector_env("gym", "Hopper-v5", n_envs=2, cond_steps=2, act_steps=4, asynchronous=False, seed=3)
    try:
        assert envs.num_envs == 2 and envs.device == torch.device("cpu")
        assert envs.single_observation_space["state"].shape == (2, 11)
        assert envs.single_action_space.shape == (4, 3)
        obs = envs.reset(seed=3)
        assert list(obs) == ["state"]
        assert obs["state"].shape == (2, 2, 11) and obs["state"].dtype == torch.float32
        step = envs.step(torch.zeros(2, 4, 3))
        assert step.obs["state"].shape == step.final_obs["state"].shape == (2, 2, 11)
        assert step.obs["state"].dtype == step.final_obs["state"].dtype == step.reward.dtype == torch.float32
        assert step.reward.shape == step.terminated.shape == step.truncated.shape == (2,)
        assert step.terminated.dtype == step.truncated.dtype == torch.bool
        assert step.n_executed.dtype == step.sim_errors.dtype == torch.int64
        assert step.n_executed.tolist() == [4, 4] and step.sim_errors.tolist() == [0, 0]
        assert step.success is None  # locomotion has no notion of success
        torch.testing.assert_close(step.final_obs, step.obs)
        tensors = [*step.obs.values(), *step.final_obs.values(),
                   *(t for t in vars(step).values() if isinstance(t, torch.Tensor))]
        assert all(t.device.type == "cpu" for t in tensors)
    finally:
        envs.close()


def test_reset_seeds_env_i_with_seed_plus_i():
    envs = make_vector_env("gym", "Hopper-v5", n_envs=2, cond_steps=1, act_steps=1, asynchronous=False)
    single = make_vector_env("gym", "Hopper-v5", n_envs=1, cond_steps=1, act_steps=1, asynchronous=False)
    try:
        torch.testing.assert_close(envs.reset(seed=5)["state"][1], single.reset(seed=6)["state"][0])
    finally:
        envs.close()
        single.close()


def test_chunk_stops_when_episode_terminates():
    envs = counting_vector_env(terminate_at=4)
    envs.reset()
    step = envs.step(np.zeros((2, 3, 1)))
    assert step.n_executed.tolist() == [3, 3] and step.reward.tolist() == [3.0, 3.0]
    step = envs.step(np.zeros((2, 3, 1)))
    assert step.n_executed.tolist() == [1, 1] and step.reward.tolist() == [1.0, 1.0]
    assert step.terminated.tolist() == [True, True] and step.truncated.tolist() == [False, False]
    assert first_obs_feature(step.final_obs) == [[3, 4], [3, 4]]
    assert first_obs_feature(step.obs) == [[0, 0], [0, 0]]  # already reset


def test_final_obs_and_truncation_at_time_limit():
    envs = counting_vector_env(max_episode_steps=5)
    envs.reset()
    step = envs.step(np.zeros((2, 3, 1)))
    assert not step.truncated.any()
    torch.testing.assert_close(step.final_obs, step.obs)
    step = envs.step(np.zeros((2, 3, 1)))
    assert step.truncated.tolist() == [True, True] and not step.terminated.any()
    assert step.n_executed.tolist() == [2, 2]
    assert first_obs_feature(step.final_obs) == [[4, 5], [4, 5]]
    assert first_obs_feature(step.obs) == [[0, 0], [0, 0]]


def test_nan_observation_truncates_and_is_counted():
    envs = counting_vector_env(nan_at=5)
    envs.reset()
    step = envs.step(torch.zeros(2, 3, 1))
    assert step.sim_errors.tolist() == [0, 0] and envs.n_sim_errors == 0
    step = envs.step(torch.zeros(2, 3, 1))
    assert step.truncated.tolist() == [True, True] and not step.terminated.any()
    assert step.sim_errors.tolist() == [1, 1] and envs.n_sim_errors == 2
    assert step.n_executed.tolist() == [2, 2] and step.reward.tolist() == [1.0, 1.0]
    assert first_obs_feature(step.final_obs) == [[4, 4], [4, 4]]  # bootstrapped from the last good obs
    assert first_obs_feature(step.obs) == [[0, 0], [0, 0]]
    step = envs.step(torch.zeros(2, 3, 1))
    assert step.sim_errors.tolist() == [0, 0] and envs.n_sim_errors == 2


def test_wrong_action_shape_names_expected_shape():
    envs = counting_vector_env()
    envs.reset()
    with pytest.raises(ValueError, match=r"expected \(n_envs, act_steps, Da\) = \(2, 3, 1\)"):
        envs.step(np.zeros((2, 1)))


def test_unknown_env_fails_fast():
    with pytest.raises(ValueError, match="Unknown gymnasium env id 'Hoper-v5': set env.id in the task config"):
        make_vector_env("gym", "Hoper-v5", n_envs=2, cond_steps=1, act_steps=1)
    with pytest.raises(ValueError, match="Unknown env family 'gymm'"):
        make_vector_env("gymm", "Hopper-v5", n_envs=2, cond_steps=1, act_steps=1)


def test_make_vector_env_normalizes(tmp_path):
    path = str(tmp_path / "normalization.npz")
    MinMaxNormalizer(-np.ones(11), np.ones(11), -np.ones(3), np.ones(3)).save(path)
    raw = make_vector_env("gym", "Hopper-v5", n_envs=1, cond_steps=1, act_steps=1, asynchronous=False)
    normalized = make_vector_env(
        "gym", "Hopper-v5", n_envs=1, cond_steps=1, act_steps=1, normalization_path=path, asynchronous=False
    )
    try:
        # with stats [-1, 1] the normalization is (almost) the identity
        torch.testing.assert_close(normalized.reset(seed=0), raw.reset(seed=0), atol=1e-5, rtol=0)
        assert normalized.single_action_space == gym.spaces.Box(-1, 1, shape=(1, 3), dtype=np.float32)
    finally:
        raw.close()
        normalized.close()


def test_async_hopper_and_dead_worker_restart():
    envs = make_vector_env("gym", "Hopper-v5", n_envs=2, cond_steps=2, act_steps=2, asynchronous=True)
    try:
        obs = envs.reset(seed=0)
        step = envs.step(torch.zeros(2, 2, 3))
        assert step.obs["state"].shape == (2, 2, 11) and step.n_executed.tolist() == [2, 2]
        before = step.obs

        os.kill(envs._envs[0].processes[1].pid, signal.SIGKILL)
        envs._envs[0].processes[1].join()
        step = envs.step(torch.zeros(2, 2, 3))
        assert envs.n_worker_restarts == 1
        assert step.truncated.tolist() == [True, True] and not step.terminated.any()
        assert step.reward.tolist() == [0.0, 0.0] and step.n_executed.tolist() == [0, 0]
        torch.testing.assert_close(step.final_obs, before)
        assert step.obs["state"].shape == obs["state"].shape

        step = envs.step(torch.zeros(2, 2, 3))
        assert step.n_executed.tolist() == [2, 2] and not step.truncated.any()
    finally:
        envs.close()


class DyingEnv(CountingEnv):
    """Kills its own worker process at step `die_at`, as a crashing simulator would."""

    def __init__(self, die_at: int | None):
        super().__init__()
        self.die_at = die_at

    def step(self, action):
        if self.t + 1 == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


def make_dying_env(die_at: int | None) -> gym.Env:
    return MultiStep(SimulatorGuard(StateDictObservation(DyingEnv(die_at))), cond_steps=1, act_steps=1)


def test_worker_dying_during_a_step_restarts():
    envs = TorchVectorEnv([functools.partial(make_dying_env, 2), functools.partial(make_dying_env, None)])
    try:
        envs.reset()
        before = envs.step(np.zeros((2, 1, 1))).obs
        step = envs.step(np.zeros((2, 1, 1)))
        assert envs.n_worker_restarts == 1 and step.truncated.all()
        torch.testing.assert_close(step.final_obs, before)
        assert first_obs_feature(step.obs) == [[0], [0]]
        step = envs.step(np.zeros((2, 1, 1)))
        assert step.n_executed.tolist() == [1, 1] and first_obs_feature(step.obs) == [[1], [1]]
    finally:
        envs.close()


class SucceedingEnv(CountingEnv):
    """Terminates at step `terminate_at`; reports info["success"], true at that step when `succeeds`."""

    def __init__(self, terminate_at: int, succeeds: bool):
        super().__init__(terminate_at=terminate_at)
        self.succeeds = succeeds

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "success": self.succeeds and terminated}


def make_succeeding_env(terminate_at: int, succeeds: bool) -> gym.Env:
    env = StateDictObservation(SucceedingEnv(terminate_at, succeeds))
    return MultiStep(SimulatorGuard(env), cond_steps=1, act_steps=2)


def test_success_reaches_episode_statistics_as_a_rate():
    envs = TorchVectorEnv([functools.partial(make_succeeding_env, 3, True),
                           functools.partial(make_succeeding_env, 5, False)], asynchronous=False)
    try:
        envs.reset()
        step = envs.step(np.zeros((2, 2, 1)))
        assert step.success.tolist() == [False, False]
        step = envs.step(np.zeros((2, 2, 1)))
        assert step.success.tolist() == [True, False]  # env 0 succeeded as its episode ended at step 3
        episodes = run_episodes(envs, lambda obs: torch.zeros(2, 2, 1), n_episodes=4, act_steps=2, seed=0)
    finally:
        envs.close()
    assert [e.success for e in episodes] == [True, True, False, False]
    assert summarize(episodes)["success_rate"] == 0.5


def test_locomotion_statistics_have_no_success_rate():
    envs = counting_vector_env(terminate_at=2)
    try:
        episodes = run_episodes(envs, lambda obs: torch.zeros(2, 3, 1), n_episodes=2, act_steps=3, seed=0)
    finally:
        envs.close()
    assert [e.success for e in episodes] == [None, None] and "success_rate" not in summarize(episodes)


def test_two_async_groups_step_apart_and_a_dead_worker_cuts_only_its_group():
    """n_groups=2: step_async / step_wait per group give the same shapes as `step`, and a killed worker rebuilds
    only its own group: that group's episodes end truncated and cut, the other group's go on."""
    envs = make_vector_env("gym", "Hopper-v5", n_envs=3, cond_steps=1, act_steps=2, asynchronous=True,
                           n_groups=2)
    try:
        assert envs.groups == [slice(0, 2), slice(2, 3)]
        envs.reset(seed=0)
        envs.step_async(0, torch.zeros(2, 2, 3))
        envs.step_async(1, torch.zeros(1, 2, 3))
        first, second = envs.step_wait(0), envs.step_wait(1)
        assert first.obs["state"].shape == (2, 1, 11) and second.obs["state"].shape == (1, 1, 11)
        assert first.n_executed.tolist() == [2, 2] and second.n_executed.tolist() == [2]

        os.kill(envs._envs[1].processes[0].pid, signal.SIGKILL)
        envs._envs[1].processes[0].join()
        step = envs.step(torch.zeros(3, 2, 3))
        assert envs.n_worker_restarts == 1
        assert step.cut.tolist() == [False, False, True] and step.truncated.tolist() == [False, False, True]
        assert step.n_executed.tolist() == [2, 2, 0]
        assert envs.step(torch.zeros(3, 2, 3)).n_executed.tolist() == [2, 2, 2]
    finally:
        envs.close()


class ThreadCountEnv(CountingEnv):
    """obs = [torch threads of the process the env runs in]."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.array([float(torch.get_num_threads())]), {}


def make_thread_count_env() -> gym.Env:
    return MultiStep(StateDictObservation(ThreadCountEnv()), 1, 1)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_async_env_workers_run_torch_on_one_thread(start_method):
    """Whatever the main process's threads (here 2, as with threads=null on this machine), each worker has 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        envs = TorchVectorEnv([make_thread_count_env] * 2, asynchronous=True, start_method=start_method)
        try:
            assert first_obs_feature(envs.reset(seed=0)) == [[1], [1]]
        finally:
            envs.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
