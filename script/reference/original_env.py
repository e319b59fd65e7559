"""`env.gym_utils` for the original DPPO code (irom-lab/dppo @ 7b10df6), built on this project's env families.

The original's agents build their envs with `make_async(...)` (old gym 0.22, D4RL's mujoco-py v2 tasks, a worker
process per env) and then call `venv.seed(seeds)`, `venv.reset_arg(options_list)` (a list of obs dicts),
`venv.reset_one_arg(env_ind, options)` and `venv.step(actions)` -> (obs {"state": (N, To, Do)}, rewards (N,),
terminated (N,), truncated (N,), infos). `run_original.py` installs this module as `env.gym_utils`, so the agents run
unchanged on this project's gymnasium tasks (`env.families`, gym family: `id` is a gymnasium id such as Hopper-v5),
with the behaviour of the original's two wrappers written here again:

- `mujoco_locomotion_lowdim`: obs -> 2 ((obs - obs_min) / (obs_max - obs_min + 1e-6) - 0.5), not clipped; actions
  [-1, 1] -> [action_min, action_max], from the dataset's normalization.npz.
- `multi_step`: runs the chunk's n_action_steps actions, stopping at the first end; sums their rewards; returns the
  last n_obs_steps observations (the oldest repeated while fewer exist); with reset_within_step it resets the env in the
  step that ends an episode and, when that end was a truncation, gives the ended episode's last obs history as
  info["final_obs"]. Its own step counter truncates at max_episode_steps when the inner env has no time limit.

Old gym's TimeLimit ends an episode at the limit with done = True and info["TimeLimit.truncated"] = not (a natural
end), and the multi-step wrapper reports terminated = done, truncated = that flag: a time-limit end comes out as both
terminated and truncated. `OldGymApi` gives the gymnasium env exactly that contract.

Differences from the original, none of which its agents can see: the envs step one after another in this process
(the original: one worker process each); `seed(s)` seeds the env's next reset through gymnasium (the original's wrapper
seeded numpy's global generator in the env's worker process); only the gym family and the two wrappers above exist.
"""

from collections import deque

import numpy as np

from env.families import make_family_env

NORMALIZATION_EPS = 1e-6  # the original's denominator guard: (obs_max - obs_min + 1e-6)
WRAPPERS = ("mujoco_locomotion_lowdim", "multi_step")  # the Gym fine-tuning configs' wrappers, in their order


class OldGymApi:
    """A gymnasium env with old gym's API: reset() -> obs (Do,), step(a) -> (obs, reward, done, info), and at the
    time limit info["TimeLimit.truncated"] = not terminated (gym 0.22's TimeLimit)."""

    def __init__(self, env):
        self.env = env
        self.next_seed = None

    def seed(self, seed: int | None) -> None:
        """The next reset starts the env's random generator from `seed`."""
        self.next_seed = seed

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self.next_seed)
        self.next_seed = None
        return obs["state"]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        obs, reward, terminated, truncated, _ = self.env.step(action)
        info = {"TimeLimit.truncated": not terminated} if truncated else {}
        return obs["state"], float(reward), bool(terminated or truncated), info


class LowdimNormalization:
    """The original's `mujoco_locomotion_lowdim` wrapper: observations {"state": normalized (Do,)}, actions
    un-normalized from [-1, 1]."""

    def __init__(self, env: OldGymApi, normalization_path: str):
        self.env = env
        with np.load(normalization_path) as stats:
            self.obs_min, self.obs_max = stats["obs_min"], stats["obs_max"]
            self.action_min, self.action_max = stats["action_min"], stats["action_max"]

    def seed(self, seed: int | None) -> None:
        self.env.seed(seed)

    def reset(self, options: dict) -> dict:
        if "seed" in options:
            self.env.seed(options["seed"])
        return {"state": self.normalize_obs(self.env.reset())}

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        return 2 * ((obs - self.obs_min) / (self.obs_max - self.obs_min + NORMALIZATION_EPS) - 0.5)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        raw_action = (action + 1) / 2 * (self.action_max - self.action_min) + self.action_min
        obs, reward, done, info = self.env.step(raw_action)
        return {"state": self.normalize_obs(obs)}, reward, done, info


class MultiStep:
    """The original's `multi_step` wrapper (see the module docstring): obs {"state": (To, Do)}, chunks (Ta', Da)."""

    def __init__(self, env: LowdimNormalization, n_obs_steps: int = 1, n_action_steps: int = 1,
                 max_episode_steps: int | None = None, reset_within_step: bool = False):
        self.env = env
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.max_episode_steps = max_episode_steps
        self.reset_within_step = reset_within_step
        self.history = deque(maxlen=max(n_obs_steps + 1, n_action_steps))
        self.n_actions = 0

    def seed(self, seed: int | None) -> None:
        self.env.seed(seed)

    def reset(self, options: dict | None = None) -> dict:
        self.history.clear()
        self.history.append(self.env.reset(options or {})["state"])
        self.n_actions = 0
        return self.stacked_obs()

    def stacked_obs(self) -> dict:
        """{"state": (To, Do)}: the last To observations, the oldest repeated while fewer than To exist."""
        recent = list(self.history)[-self.n_obs_steps:]
        return {"state": np.stack([recent[0]] * (self.n_obs_steps - len(recent)) + recent)}

    def step(self, chunk: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        chunk = chunk[None] if chunk.ndim == 1 else chunk
        total_reward, terminated, truncated = 0.0, False, False
        for action in chunk:
            self.n_actions += 1
            obs, reward, done, info = self.env.step(action)
            self.history.append(obs["state"])
            total_reward += reward
            if "TimeLimit.truncated" in info:
                terminated, truncated = done, info["TimeLimit.truncated"]
            elif done:
                terminated = True
            elif self.max_episode_steps is not None and self.n_actions >= self.max_episode_steps:
                truncated = True
            if terminated or truncated:
                break
        obs, info = self.stacked_obs(), {}
        if self.reset_within_step and (terminated or truncated):
            if truncated:
                info["final_obs"] = obs
            obs = self.reset()
        return obs, total_reward, terminated, truncated, info


class SequentialVectorEnv:
    """The original's vector env contract over envs stepped one after another in this process.

    Beside the contract it keeps the episodes that end, so that returns can be counted as this project counts them
    (the original's agents count only the episodes that start and end within one iteration): `pop_episodes()` gives
    every episode ended since its last call as (return, whether it was the env's first episode since a reset by the
    agent). A reset by the agent drops the episode it interrupts.
    """

    def __init__(self, envs: list[MultiStep]):
        self.envs = envs
        self.num_envs = len(envs)
        self.returns = np.zeros(self.num_envs)
        self.first = np.ones(self.num_envs, dtype=bool)
        self.ended: list[tuple[float, bool]] = []

    def seed(self, seeds: list[int]) -> None:
        for env, seed in zip(self.envs, seeds, strict=True):
            env.seed(seed)

    def reset_arg(self, options_list: list[dict]) -> list[dict]:
        return [self.reset_one_arg(i, options) for i, options in enumerate(options_list)]

    def reset_one_arg(self, env_ind: int, options: dict | None = None) -> dict:
        self.returns[env_ind], self.first[env_ind] = 0.0, True
        return self.envs[env_ind].reset(options)

    def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """actions (N, Ta', Da) -> obs {"state": (N, To, Do)}, rewards (N,), terminated (N,), truncated (N,), infos."""
        results = [env.step(chunk) for env, chunk in zip(self.envs, actions, strict=True)]
        obs, rewards, terminated, truncated, infos = zip(*results)
        self.returns += rewards
        for i in np.flatnonzero(np.logical_or(terminated, truncated)):
            self.ended.append((float(self.returns[i]), bool(self.first[i])))
            self.returns[i], self.first[i] = 0.0, False
        return ({"state": np.stack([o["state"] for o in obs])}, np.array(rewards),
                np.array(terminated, dtype=bool), np.array(truncated, dtype=bool), list(infos))

    def pop_episodes(self) -> list[tuple[float, bool]]:
        ended, self.ended = self.ended, []
        return ended


def make_async(id, num_envs=1, wrappers=None, env_type=None, max_episode_steps=None, **ignored):
    """The original's `make_async` for Gym locomotion tasks: `num_envs` gymnasium envs `id` of this project's gym
    family, wrapped as the config's `wrappers` ({name: kwargs}) say. Arguments for renderers, robomimic, furniture
    and D3IL (`ignored`) have no effect here."""
    if env_type is not None:
        raise ValueError(f"env.env_type={env_type}: only the Gym locomotion configs run on this project's envs.")
    wrappers = dict(wrappers or {})
    if list(wrappers) != list(WRAPPERS):
        raise ValueError(f"env.wrappers {list(wrappers)}: this replacement reproduces the Gym configs' "
                         f"{list(WRAPPERS)}; use a cfg/gym/finetune config.")

    def make_env():
        env = LowdimNormalization(OldGymApi(make_family_env("gym", id)), **wrappers["mujoco_locomotion_lowdim"])
        return MultiStep(env, **wrappers["multi_step"])

    return SequentialVectorEnv([make_env() for _ in range(num_envs)])
