"""robosuite manipulation tasks (robomimic's Lift, PickPlaceCan, NutAssemblySquare, TwoArmTransport) as gymnasium envs.

robomimic's own env wrapper needs mujoco-py, so this wraps robosuite 1.5 directly
with robomimic's settings: Panda arm(s), the BASIC composite controller (OSC_POSE
arms: an action in [-1, 1] moves the end effector by up to 0.05 m and rotates it
by up to 0.5 rad per step, then the gripper, -1 open / +1 closed), 20 Hz control,
sparse reward (1 at success), the episode horizons of DPPO's robomimic tasks.

Observations are a dict:
    state: (Do,) float32, robomimic's low-dim keys concatenated in the order given
    rgb:   (3 * V, H, W) uint8, the V image keys concatenated along channels, channels-first, upright
           (robosuite renders upside down; robomimic flips its images upright, and so does this env)
An episode terminates at success and is truncated at the horizon.

Rendering needs an OpenGL backend: MUJOCO_GL=egl (set here when unset) works on
a CPU-only machine through Mesa's software EGL.
"""

import functools
import logging
import os
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

DEFAULT_STATE_KEYS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
TWO_ARM_STATE_KEYS = DEFAULT_STATE_KEYS[:3] + ["robot1_eef_pos", "robot1_eef_quat", "robot1_gripper_qpos", "object"]
IMAGE_SUFFIX = "_image"
CONTROL_FREQ = 20
DEFAULT_RENDER_SIZE = 256  # render() frames for videos, (H, W) = (256, 256)


@dataclass(frozen=True)
class RobosuiteTask:
    """A robomimic task: robosuite env name, robots, horizon (max episode steps), default state keys."""

    env_name: str
    robots: tuple[str, ...]
    horizon: int
    state_keys: list[str]
    env_kwargs: dict = field(default_factory=dict)


ROBOSUITE_TASKS = {
    "Lift": RobosuiteTask("Lift", ("Panda",), 300, DEFAULT_STATE_KEYS),
    "PickPlaceCan": RobosuiteTask("PickPlaceCan", ("Panda",), 300, DEFAULT_STATE_KEYS),
    "NutAssemblySquare": RobosuiteTask("NutAssemblySquare", ("Panda",), 400, DEFAULT_STATE_KEYS),
    # robomimic's "single-arm-opposed": two Pandas facing each other across the tables.
    "TwoArmTransport": RobosuiteTask("TwoArmTransport", ("Panda", "Panda"), 800, TWO_ARM_STATE_KEYS,
                                     {"env_configuration": "opposed"}),
}
SHORT_TASK_NAMES = {"lift": "Lift", "can": "PickPlaceCan", "square": "NutAssemblySquare", "transport": "TwoArmTransport"}


class GLBackendError(RuntimeError):
    """No OpenGL backend could render offscreen."""


def robosuite_task(env_id: str) -> RobosuiteTask:
    """The task of a robomimic env name ('PickPlaceCan') or short name ('can')."""
    name = SHORT_TASK_NAMES.get(env_id, env_id)
    if name not in ROBOSUITE_TASKS:
        known = ", ".join([*SHORT_TASK_NAMES, *ROBOSUITE_TASKS])
        raise ValueError(f"Unknown robosuite task '{env_id}': use one of {known}.")
    return ROBOSUITE_TASKS[name]


def import_robosuite():
    """robosuite, imported with MUJOCO_GL=egl unless set otherwise, and its console warnings filtered out
    (the missing private macro file, optional robot models: harmless here)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)
    import robosuite

    return robosuite


@functools.cache
def check_gl_backend() -> None:
    """Open and close one offscreen GL context the way robosuite does; raise GLBackendError naming the fix."""
    import_robosuite()
    backend = os.environ.get("MUJOCO_GL", "").lower()
    try:
        if backend == "egl":
            from robosuite.renderers.context.egl_context import EGLGLContext as GLContext
        elif backend == "osmesa":
            from robosuite.renderers.context.osmesa_context import OSMesaGLContext as GLContext
        else:
            from robosuite.renderers.context.glfw_context import GLFWGLContext as GLContext
        context = GLContext(max_width=64, max_height=64, device_id=-1)
        context.make_current()
        context.free()
    except Exception as error:  # PyOpenGL, EGL and GLFW fail with many exception types
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise GLBackendError(
            f"Offscreen rendering with MUJOCO_GL={backend or '(unset)'} failed ({type(error).__name__}: {first_line}): "
            "set MUJOCO_GL=egl (and PYOPENGL_PLATFORM unset or egl) before python starts, and install Mesa's EGL "
            "(apt-get install libegl1 libgl1-mesa-dri) or a GPU driver."
        ) from None


def camera_name(image_key: str) -> str:
    """robomimic image key -> robosuite camera, e.g. 'robot0_eye_in_hand_image' -> 'robot0_eye_in_hand'."""
    if not image_key.endswith(IMAGE_SUFFIX):
        raise ValueError(f"Image key '{image_key}' does not end with '{IMAGE_SUFFIX}': name a camera as robomimic "
                         "does, e.g. agentview_image or robot0_eye_in_hand_image.")
    return image_key[: -len(IMAGE_SUFFIX)]


class RobosuiteEnv(gym.Env):
    """One robosuite task as a gymnasium env; see the module docstring for observations and actions.

    `robosuite_env` is the underlying robosuite env (its `sim` gives privileged object poses);
    `robomimic_obs()` the current observation under robomimic's dataset keys.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(
        self,
        env_id: str,
        obs_keys: list[str] | None = None,
        image_keys: list[str] = (),
        image_size: int = 96,
        max_episode_steps: int | None = None,
        cpu_render: bool = False,
        render_mode: str | None = None,
        render_size: int = DEFAULT_RENDER_SIZE,
        seed: int | None = None,
        **kwargs,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        self.task = robosuite_task(env_id)
        self.obs_keys = list(self.task.state_keys if obs_keys is None else obs_keys)
        self.image_keys = list(image_keys)
        self.max_episode_steps = max_episode_steps or self.task.horizon
        self.cpu_render = cpu_render
        self.render_mode = render_mode
        self.render_size = render_size
        cameras = [camera_name(key) for key in self.image_keys]
        offscreen = bool(cameras) or render_mode == "rgb_array"
        robosuite = import_robosuite()
        if offscreen:
            check_gl_backend()
        self.env_kwargs = {
            "robots": list(self.task.robots),
            "controller_configs": robosuite.load_composite_controller_config(controller="BASIC"),
            "has_renderer": False,
            "has_offscreen_renderer": offscreen,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": bool(cameras),
            "control_freq": CONTROL_FREQ,
            "reward_shaping": False,
            "horizon": self.max_episode_steps,
            "hard_reset": False,
            "camera_names": cameras or "agentview",
            "camera_heights": image_size,
            "camera_widths": image_size,
            "camera_depths": False,
            # The seed also fixes what robosuite draws once, when it builds the model (Lift's cube size).
            "seed": seed,
            **self.task.env_kwargs,
            **kwargs,
        }
        self.robosuite_env = robosuite.make(self.task.env_name, **self.env_kwargs)
        self._apply_cpu_render()
        self._raw_obs = self.robosuite_env._get_observations(force_update=True)
        obs = self.robomimic_obs()
        missing = [key for key in [*self.obs_keys, *self.image_keys] if key not in obs]
        if missing:
            raise ValueError(f"{self.task.env_name} has no observation {missing}: choose among {sorted(obs)}.")
        observation = self._observation(obs)
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, observation["state"].shape, dtype=np.float32)}
        if self.image_keys:
            spaces["rgb"] = gym.spaces.Box(0, 255, observation["rgb"].shape, dtype=np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.robosuite_env.action_dim,), dtype=np.float32)
        self._elapsed_steps = 0

    def _apply_cpu_render(self) -> None:
        """With `cpu_render`, turn off multisampling and shadows (about 2x faster software rendering, measured; images
        then differ slightly from robomimic's). MuJoCo reads both when the render context is made, so remake it."""
        context = self.robosuite_env.sim._render_context_offscreen
        if not self.cpu_render or context is None:
            return
        quality = self.robosuite_env.sim.model._model.vis.quality
        if quality.offsamples == 0 and quality.shadowsize == 0 and context.con.offSamples == 0:
            return
        quality.offsamples = 0
        quality.shadowsize = 0
        context.gl_ctx.make_current()
        context.con.free()
        context._set_mujoco_context_and_buffers()

    def robomimic_obs(self) -> dict[str, np.ndarray]:
        """The current observation under robomimic's dataset keys: `object` (robosuite's object-state), every
        robot-prefixed key but the proprio-state groups, and the image keys (H, W, 3) uint8 upright."""
        obs = {"object": np.asarray(self._raw_obs["object-state"])}
        prefixes = tuple(robot.robot_model.naming_prefix for robot in self.robosuite_env.robots)
        for key, value in self._raw_obs.items():
            if key.startswith(prefixes) and not key.endswith("proprio-state") and not key.endswith(IMAGE_SUFFIX):
                obs[key] = np.asarray(value)
        for key in self.image_keys:
            obs[key] = np.ascontiguousarray(self._raw_obs[key][::-1])
        return obs

    def _observation(self, obs: dict) -> dict[str, np.ndarray]:
        """robomimic obs -> {"state": (Do,) float32, "rgb": (3 * V, H, W) uint8 when there are image keys}."""
        state = np.concatenate([np.asarray(obs[key], dtype=np.float32).reshape(-1) for key in self.obs_keys])
        observation = {"state": state}
        if self.image_keys:
            observation["rgb"] = np.concatenate([obs[key].transpose(2, 0, 1) for key in self.image_keys])
        return observation

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (time, qpos, qvel), as robomimic stores it in `states`."""
        return np.array(self.robosuite_env.sim.get_state().flatten())

    def is_success(self) -> bool:
        return bool(self.robosuite_env._check_success())

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new episode; a seed reseeds robosuite's generator in place, so object placement and the arm's initial
        noise (which share it) are the same for the same seed."""
        super().reset(seed=seed)
        if seed is not None:
            self.robosuite_env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self.robosuite_env.reset()
        self._apply_cpu_render()
        # robosuite's reset observation has zeros for the object-to-gripper poses (PickPlaceCan, NutAssemblySquare):
        # those sensors read the gripper pose cached by the first update. A second update reads it.
        self._raw_obs = self.robosuite_env._get_observations(force_update=True)
        self._elapsed_steps = 0
        return self._observation(self.robomimic_obs()), {"success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._raw_obs, reward, _, _ = self.robosuite_env.step(action)
        self._elapsed_steps += 1
        success = self.is_success()
        truncated = self._elapsed_steps >= self.max_episode_steps and not success
        return self._observation(self.robomimic_obs()), float(reward), success, truncated, {"success": success}

    def render(self) -> np.ndarray | None:
        """The agentview camera, (render_size, render_size, 3) uint8 upright, with render_mode='rgb_array'."""
        if self.render_mode != "rgb_array":
            return None
        frame = self.robosuite_env.sim.render(camera_name="agentview", width=self.render_size, height=self.render_size)
        return np.ascontiguousarray(frame[::-1])

    def close(self):
        self.robosuite_env.close()


def make_robosuite_env(env_id: str, seed: int | None = None, render_mode: str | None = None, **kwargs) -> RobosuiteEnv:
    """One robosuite task env; `kwargs` are `RobosuiteEnv`'s (obs_keys default to the task's in `ROBOSUITE_TASKS`,
    max_episode_steps to its horizon) and beyond them `robosuite.make`'s. Two envs made with the same seed hold
    the same model and start the same episodes for the same reset seeds."""
    env = RobosuiteEnv(env_id, render_mode=render_mode, seed=seed, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
