"""Vectorized envs as torch tensors on the run's device.

A thin layer over gymnasium's vector envs (auto-reset in the same step, so the
final observation of an ended episode comes back for bootstrapping). It adds
what gymnasium lacks: counting simulator failures (see `SimulatorGuard`) and
rebuilding the vector env when a worker process dies.
"""

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

from dppo.normalization import MinMaxNormalizer
from env.families import check_env, make_family_env
from env.wrappers.guard import SimulatorGuard
from env.wrappers.multi_step import MultiStep
from env.wrappers.normalization import NormalizeObsAction
from env.wrappers.video import VideoRecorder, require_mp4_writer

logger = logging.getLogger(__name__)

# What gymnasium's AsyncVectorEnv raises when a worker process is gone:
# BrokenPipeError when sending it the actions, ConnectionResetError or
# EOFError when waiting for its answer.
WORKER_DIED_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError)


@dataclass
class VectorStep:
    """One action chunk in every env; all tensors on the env's device.

    obs:        {key: (n_envs, To, ...)} next obs (already reset where an episode ended): "state" float32,
                "rgb" uint8 for pixel tasks
    reward:     (n_envs,) float32, summed over the executed steps of the chunk
    terminated: (n_envs,) bool
    truncated:  (n_envs,) bool
    final_obs:  {key: (n_envs, To, ...)}, last obs of the ended episode where one ended, else `obs`
    n_executed: (n_envs,) int64, simulator steps run
    sim_errors: (n_envs,) int64, simulator failures turned into truncations
    cut:        (n_envs,) bool, the episode ended for a reason other than the task: a simulator failure or a
                restart of the vector env after a worker died (every env). Cut episodes are truncations for
                learning but not finished episodes for the statistics.
    success:    (n_envs,) bool, the task was solved during the chunk; None when the envs report no success
                (gym locomotion)
    """

    obs: dict
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: dict
    n_executed: torch.Tensor
    sim_errors: torch.Tensor
    cut: torch.Tensor
    success: torch.Tensor | None = None


def _per_env_info(info: dict, key: str, num_envs: int) -> np.ndarray:
    """(num_envs,) int64 values of an info key, read from the ended episode's info where one ended."""
    values = np.zeros(num_envs, dtype=np.int64)
    for source in (info, info.get("final_info", {})):
        if key in source:
            mask = source[f"_{key}"]
            values[mask] = source[key][mask]
    return values


def _copy_obs(obs: dict) -> dict:
    """{key: (n_envs, ...)} numpy arrays, copied out of the vector env's buffers."""
    return {key: np.array(value) for key, value in obs.items()}


def cat_samples(parts: list) -> torch.Tensor | dict:
    """Consecutive groups of samples (n_g, ...) -> (sum n_g, ...), for tensors or dicts of tensors."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], dict):
        return {key: cat_samples([part[key] for part in parts]) for key in parts[0]}
    return torch.cat(parts)


def concat_steps(steps: list[VectorStep]) -> VectorStep:
    """The VectorSteps of consecutive groups of envs -> one VectorStep of all of them (env order kept)."""
    if len(steps) == 1:
        return steps[0]
    values = {field.name: [getattr(step, field.name) for step in steps] for field in dataclasses.fields(VectorStep)}
    return VectorStep(**{name: None if parts[0] is None else cat_samples(parts) for name, parts in values.items()})


def env_groups(num_envs: int, n_groups: int) -> list[slice]:
    """Consecutive, nearly equal groups of env indices: env_groups(5, 2) = [slice(0, 3), slice(3, 5)]."""
    if not 1 <= n_groups <= num_envs:
        raise ValueError(f"n_groups={n_groups} must be in 1..n_envs ({num_envs}).")
    bounds = [round(g * num_envs / n_groups) for g in range(n_groups + 1)]
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]


class SingleThreadedWorker:
    """An env constructor that, in a worker process, first sets torch to 1 thread: each async env is one worker
    process, and a worker's torch (any torch op of a wrapper or simulator stack) must not start one thread per core
    on top of the other workers, whatever the main process's `threads` setting is (also `threads=null`). Called in
    the process that built it (gymnasium builds one env there to read the spaces), it changes nothing."""

    def __init__(self, env_fn: Callable[[], gym.Env]):
        self.env_fn = env_fn
        self.main_pid = os.getpid()

    def __call__(self) -> gym.Env:
        if os.getpid() != self.main_pid:
            torch.set_num_threads(1)
        return self.env_fn()


class TorchVectorEnv:
    """Steps `len(env_fns)` envs with action chunks and returns torch tensors on `device`.

    Each env is a `MultiStep` env: observations {key: (To, ...)}, actions (act_steps, Da).
    `start_method` is the multiprocessing start method of the workers (None: the platform's default).
    With `asynchronous=True` every env runs in its own process; a dead worker
    makes its vector env be rebuilt (counted in `n_worker_restarts`).

    With `n_groups` > 1 the envs form that many consecutive groups, each its own gymnasium vector env, and
    `step_async(g, actions)` / `step_wait(g)` step group g alone: the caller can compute the next actions of
    one group while the workers of another step (the overlapped rollout of the fine-tuning loop).
    `step` and `reset` act on every env either way.
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        device: str | torch.device = "cpu",
        asynchronous: bool = True,
        start_method: str | None = None,
        n_groups: int = 1,
    ):
        self.env_fns = list(env_fns)
        self.device = torch.device(device)
        self.asynchronous = asynchronous
        self.start_method = start_method
        self.num_envs = len(self.env_fns)
        self.groups = env_groups(self.num_envs, n_groups)
        self._envs = [self._build(group) for group in self.groups]
        self.single_observation_space = self._envs[0].single_observation_space
        self.single_action_space = self._envs[0].single_action_space
        self.n_sim_errors = 0
        self.n_worker_restarts = 0
        # per group: the obs {key: (group size, To, ...)} its next actions act on, and what step_async left
        self._obs: list[dict | None] = [None] * len(self.groups)
        self._pending: list[np.ndarray | Exception | None] = [None] * len(self.groups)

    def _build(self, group: slice) -> gym.vector.VectorEnv:
        autoreset_mode = gym.vector.AutoresetMode.SAME_STEP
        if self.asynchronous:
            workers = [SingleThreadedWorker(env_fn) for env_fn in self.env_fns[group]]
            return gym.vector.AsyncVectorEnv(workers, shared_memory=True, autoreset_mode=autoreset_mode,
                                             context=self.start_method)
        return gym.vector.SyncVectorEnv(self.env_fns[group], autoreset_mode=autoreset_mode)

    def _tensor(self, x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(x).to(device=self.device, dtype=dtype)

    def _obs_tensors(self, obs: dict) -> dict:
        """{key: (n, ...)} numpy -> tensors on the device: float observations as float32, images stay uint8."""
        return {key: self._tensor(value, torch.uint8 if value.dtype == np.uint8 else torch.float32)
                for key, value in obs.items()}

    def _vector_step(self, obs, reward, terminated, truncated, final_obs, n_executed, sim_errors,
                     success=None, restarted: bool = False) -> VectorStep:
        """Numpy arrays (see `VectorStep`) -> tensors on the device."""
        return VectorStep(
            obs=self._obs_tensors(obs),
            reward=self._tensor(reward, torch.float32),
            terminated=self._tensor(terminated, torch.bool),
            truncated=self._tensor(truncated, torch.bool),
            final_obs=self._obs_tensors(final_obs),
            n_executed=self._tensor(n_executed, torch.int64),
            sim_errors=self._tensor(sim_errors, torch.int64),
            cut=self._tensor((np.asarray(sim_errors) > 0) | restarted, torch.bool),
            success=None if success is None else self._tensor(success, torch.bool),
        )

    def reset(self, seed: int | None = None) -> dict:
        """Resets all envs (env i gets seed + i). Returns obs {key: (n_envs, To, ...)}."""
        for g, (group, env) in enumerate(zip(self.groups, self._envs)):
            obs, _ = env.reset(seed=None if seed is None else seed + group.start)
            self._obs[g] = _copy_obs(obs)
            self._pending[g] = None
        return self._obs_tensors({key: np.concatenate([obs[key] for obs in self._obs]) for key in self._obs[0]})

    def step(self, actions: torch.Tensor | np.ndarray) -> VectorStep:
        """actions: (n_envs, act_steps, Da), numpy or torch on any device."""
        actions = self._checked_actions(actions, self.num_envs)
        for g, group in enumerate(self.groups):
            self.step_async(g, actions[group])
        return concat_steps([self.step_wait(g) for g in range(len(self.groups))])

    def _group_size(self, g: int) -> int:
        return self.groups[g].stop - self.groups[g].start

    def _checked_actions(self, actions: torch.Tensor | np.ndarray, n_envs: int) -> np.ndarray:
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        actions = np.asarray(actions, dtype=np.float32)
        expected_shape = (n_envs, *self.single_action_space.shape)
        if actions.shape != expected_shape:
            raise ValueError(f"Actions have shape {actions.shape}, expected (n_envs, act_steps, Da) = {expected_shape}.")
        return actions

    def step_async(self, g: int, actions: torch.Tensor | np.ndarray) -> None:
        """Start stepping group g with actions (group size, act_steps, Da); `step_wait(g)` returns the result."""
        if self._obs[g] is None:
            raise RuntimeError("TorchVectorEnv.step called before reset(): call reset() first.")
        actions = self._checked_actions(actions, self._group_size(g))
        self._pending[g] = actions
        if self.asynchronous:
            try:
                self._envs[g].step_async(actions)
            except WORKER_DIED_ERRORS as exc:
                self._pending[g] = exc

    def step_wait(self, g: int) -> VectorStep:
        """The VectorStep of group g (tensors of the group's size) for the actions given to `step_async(g)`."""
        pending, self._pending[g] = self._pending[g], None
        if pending is None:
            raise RuntimeError(f"step_wait({g}) without step_async({g}).")
        env, n_envs = self._envs[g], self._group_size(g)
        try:
            if isinstance(pending, Exception):
                raise pending
            obs, reward, terminated, truncated, info = env.step_wait() if self.asynchronous else env.step(pending)
        except WORKER_DIED_ERRORS as exc:
            if not self.asynchronous:
                raise
            return self._restart_after(g, exc)

        obs = _copy_obs(obs)
        final_obs = _copy_obs(obs)
        ended = info.get("_final_obs", np.zeros(n_envs, dtype=bool))
        for i in np.flatnonzero(ended):
            for key, value in info["final_obs"][i].items():
                final_obs[key][i] = value
        sim_errors = _per_env_info(info, "sim_error", n_envs)
        self.n_sim_errors += int(sim_errors.sum())
        self._obs[g] = obs
        n_executed = _per_env_info(info, "n_executed", n_envs)
        reports_success = "success" in info or "success" in info.get("final_info", {})
        success = _per_env_info(info, "success", n_envs) > 0 if reports_success else None
        return self._vector_step(obs, reward, terminated, truncated, final_obs, n_executed, sim_errors, success)

    def _restart_after(self, g: int, exc: Exception) -> VectorStep:
        """Rebuilds group g's vector env after a worker died; each of its episodes ends truncated at the obs
        before the step."""
        logger.warning("A vector env worker died (%r): rebuilding the vector env.", exc)
        self._close_broken(self._envs[g])
        self._envs[g] = self._build(self.groups[g])
        self.n_worker_restarts += 1
        final_obs = self._obs[g]
        obs, _ = self._envs[g].reset()
        self._obs[g] = _copy_obs(obs)
        zeros, ones = np.zeros(self._group_size(g)), np.ones(self._group_size(g))
        return self._vector_step(self._obs[g], zeros, zeros, ones, final_obs, zeros, zeros, restarted=True)

    @staticmethod
    def _close_broken(env: gym.vector.AsyncVectorEnv) -> None:
        """Closes an async vector env with a dead worker.

        `AsyncVectorEnv.close` would first wait for the pending step on the dead
        pipe and raise again, so kill the workers and close the pipes here.
        """
        for process in env.processes:
            if process.is_alive():
                process.kill()
        for pipe in env.parent_pipes:
            if pipe is not None:
                pipe.close()
        for process in env.processes:
            process.join()
        env.closed = True

    def close(self) -> None:
        for env in self._envs:
            env.close()


def _make_env(
    family: str,
    env_id: str,
    env_kwargs: dict,
    cond_steps: int,
    act_steps: int,
    normalization_path: str | None,
    seed: int | None,
    video_dir: str | None,
    max_video_episodes: int,
) -> gym.Env:
    env = make_family_env(family, env_id, seed=seed, render_mode="rgb_array" if video_dir else None, **env_kwargs)
    env = SimulatorGuard(env)
    if video_dir:
        env = VideoRecorder(env, video_dir, max_episodes=max_video_episodes)
    env = MultiStep(env, cond_steps, act_steps)
    if normalization_path:  # once per chunk: the (To, Do) history and the (Ta, Da) chunk in one call each
        env = NormalizeObsAction(env, MinMaxNormalizer.load(normalization_path))
    return env


def make_env_fn(
    family: str,
    env_id: str,
    cond_steps: int,
    act_steps: int,
    env_kwargs: dict | None = None,
    normalization_path: str | None = None,
    seed: int | None = None,
    video_dir: str | None = None,
    max_video_episodes: int = 1,
) -> Callable[[], gym.Env]:
    """A picklable function that builds one env inside a worker:
    family env -> SimulatorGuard -> [VideoRecorder] -> MultiStep -> [NormalizeObsAction]."""
    return functools.partial(
        _make_env, family, env_id, dict(env_kwargs or {}), cond_steps, act_steps, normalization_path, seed,
        video_dir, max_video_episodes,
    )


def make_vector_env(
    family: str,
    env_id: str,
    n_envs: int,
    cond_steps: int,
    act_steps: int,
    env_kwargs: dict | None = None,
    normalization_path: str | None = None,
    device: str | torch.device = "cpu",
    asynchronous: bool = True,
    seed: int = 0,
    video_dir: str | None = None,
    n_groups: int = 1,
) -> TorchVectorEnv:
    """`n_envs` envs of a task family (env i seeded with seed + i); only env 0 records video. `n_groups`: see
    `TorchVectorEnv`.

    Envs that render offscreen (camera observations, `env_kwargs["image_keys"]`, or video) start their workers
    with forkserver: an EGL context made in a forked worker hangs (measured with robosuite here).
    """
    check_env(family, env_id)
    if normalization_path:
        MinMaxNormalizer.load(normalization_path)
    if video_dir:
        require_mp4_writer()
    env_fns = [
        make_env_fn(
            family,
            env_id,
            cond_steps,
            act_steps,
            env_kwargs=env_kwargs,
            normalization_path=normalization_path,
            seed=seed + i,
            video_dir=video_dir if i == 0 else None,
        )
        for i in range(n_envs)
    ]
    renders = bool((env_kwargs or {}).get("image_keys")) or video_dir is not None
    return TorchVectorEnv(env_fns, device=device, asynchronous=asynchronous,
                          start_method="forkserver" if renders else None, n_groups=n_groups)


def make_task_vector_env(env_cfg, n_envs: int, cond_steps: int, act_steps: int, **kwargs) -> TorchVectorEnv:
    """`make_vector_env` for a task config's `env` block (family, id, kwargs)."""
    env_kwargs = OmegaConf.to_container(env_cfg.kwargs, resolve=True) if env_cfg.get("kwargs") else {}
    return make_vector_env(env_cfg.family, env_cfg.id, n_envs, cond_steps, act_steps, env_kwargs=env_kwargs,
                           **kwargs)
