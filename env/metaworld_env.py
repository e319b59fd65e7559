"""Meta-World (metaworld 3.x): its 50 Sawyer manipulation tasks, one by name, as gymnasium envs.

A task is named as Meta-World names it (`env.id: pick-place-v3`). The env is Meta-World's
goal-observable version of the task (the goal position is in the observation, as in MT1), with a
new random object and goal placement at every reset drawn from the env's own seeded generator:
the same seed gives the same sequence of placements, and no two envs share one. (MT1 instead
draws each episode from 50 placements fixed in advance.)

    state:  (39,) float32: hand xyz, gripper opening, two objects' poses, the same 18 values of the
            previous step, goal xyz
    action: (4,) in [-1, 1]: end-effector xyz displacement, gripper effort
    reward: "sparse" (default): 1.0 on the step the task is solved, else 0.0, the episode terminating
            there (as the robosuite family); "dense": Meta-World's shaped reward (v2, 0 to 10 per step)
    info["success"]: whether the task is solved at this step (Meta-World's own test)

Episodes are truncated at `max_episode_steps` (Meta-World's 500 by default). The scripted expert of
every task (`metaworld.policies`) is what script/dataset/make_metaworld_demos.py records.
metaworld 3.1.1 pins mujoco 3.3.0; this project runs it on mujoco 3.8.0 (install.sh installs it
without that pin; tests/test_metaworld_env.py checks the envs and experts on the installed mujoco).
"""

import warnings

import gymnasium as gym
import numpy as np

REWARDS = ("sparse", "dense")


class MetaWorldSimulationError(RuntimeError):
    """Meta-World caught an unstable simulation and froze the observation (SimulatorGuard ends the episode)."""


def import_metaworld():
    """metaworld, or a one-line error naming the install command."""
    try:
        import metaworld
    except ImportError:
        raise ImportError("Meta-World tasks need metaworld: run `bash install.sh` (it installs metaworld 3.1.1 "
                          "without its mujoco pin).") from None
    return metaworld


def task_names() -> list[str]:
    """Every Meta-World task name, e.g. 'pick-place-v3'."""
    return list(import_metaworld().env_dict.ALL_V3_ENVIRONMENTS)


def metaworld_task(env_id: str) -> str:
    """`env_id` when Meta-World has that task, else a one-line ValueError listing the tasks."""
    names = task_names()
    if env_id not in names:
        raise ValueError(f"Unknown Meta-World task '{env_id}': set env.id in the task config to one of "
                         f"{', '.join(names)}.")
    return env_id


def expert_policy(env_id: str):
    """Meta-World's scripted expert of a task, e.g. pick-place-v3 -> SawyerPickPlaceV3Policy(): `get_action(obs)`
    maps a (39,) observation to a (4,) action."""
    import metaworld.policies

    # its policies warn, on their first action, that their gains exceed the [-1, 1] the env clips to
    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module="metaworld")
    policies = metaworld.policies.ENV_POLICY_MAP
    if metaworld_task(env_id) not in policies:
        raise ValueError(f"Meta-World has no scripted policy for {env_id}.")
    return policies[env_id]()


class MetaWorldEnv(gym.Env):
    """One Meta-World task as a gymnasium env with dict observations; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, env_id: str, seed: int | None = None, render_mode: str | None = None, reward: str = "sparse",
                 terminate_on_success: bool = True, max_episode_steps: int | None = None):
        if reward not in REWARDS:
            raise ValueError(f"Unknown Meta-World reward '{reward}': set env.kwargs.reward to sparse or dense.")
        metaworld = import_metaworld()
        env_class = metaworld.env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{metaworld_task(env_id)}-goal-observable"]
        self.task = env_id
        self.env = env_class(seed=seed, render_mode=render_mode)
        self.env._freeze_rand_vec = False  # a new placement at every reset ...
        self.env.seeded_rand_vec = True  # ... drawn from the env's seeded generator, not numpy's global one
        self.max_episode_steps = max_episode_steps or self.env.max_path_length
        self.env.max_path_length = self.max_episode_steps
        self.reward = reward
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-np.inf, np.inf, shape=self.env.observation_space.shape, dtype=np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=self.env.action_space.shape, dtype=np.float32)
        if seed is not None:
            self.env.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.env.seed(seed)
        obs, _ = self.env.reset()
        return {"state": obs.astype(np.float32)}, {"success": False}

    def step(self, action):
        obs, dense_reward, _, truncated, info = self.env.step(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))
        if self.env._did_see_sim_exception:
            raise MetaWorldSimulationError(f"{self.task}: MuJoCo became unstable; Meta-World froze the observation.")
        success = bool(info["success"])
        reward = float(success) if self.reward == "sparse" else float(dense_reward)
        terminated = success and self.terminate_on_success
        return {"state": obs.astype(np.float32)}, reward, terminated, truncated and not terminated, {"success": success}

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def make_metaworld_env(env_id: str, seed: int | None = None, render_mode: str | None = None, **kwargs) -> MetaWorldEnv:
    """The family's maker (env/families.py): kwargs are MetaWorldEnv's (reward, terminate_on_success,
    max_episode_steps)."""
    return MetaWorldEnv(env_id, seed=seed, render_mode=render_mode, **kwargs)
