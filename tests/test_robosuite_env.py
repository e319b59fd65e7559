"""robosuite tasks as gymnasium envs, the scripted experts, and the robomimic-layout demo maker."""

import json
import os
import sys

import h5py
import numpy as np
import pytest

from env.robosuite_env import GLBackendError, check_gl_backend, make_robosuite_env

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "script", "dataset"))
import make_robosuite_demos  # noqa: E402
from convert_robomimic import convert_robomimic  # noqa: E402

from env.robosuite_experts import make_expert  # noqa: E402

# Default state dims: eef pos 3 + eef quat 4 + gripper qpos 2 per robot, then robomimic's `object` vector.
STATE_DIMS = {"Lift": 9 + 10, "PickPlaceCan": 9 + 14, "NutAssemblySquare": 9 + 14, "TwoArmTransport": 18 + 41}
ACTION_DIMS = {"Lift": 7, "PickPlaceCan": 7, "NutAssemblySquare": 7, "TwoArmTransport": 14}
EXPERT_HORIZON = 100  # the Lift expert needs about 35 steps
PIXEL_STD_MIN = 10.0  # a rendered scene, not a blank frame


def requires_gl():
    try:
        check_gl_backend()
    except GLBackendError as error:
        pytest.skip(f"no offscreen GL backend: {error}")


@pytest.mark.parametrize("env_id", sorted(STATE_DIMS))
def test_state_observations_actions_and_seeded_resets(env_id):
    env = make_robosuite_env(env_id)
    obs, info = env.reset(seed=3)
    assert set(obs) == {"state"} and obs["state"].dtype == np.float32 and obs["state"].shape == (STATE_DIMS[env_id],)
    assert env.observation_space.contains(obs) and info == {"success": False}
    raw = env.robosuite_env._get_observations(force_update=True)
    np.testing.assert_allclose(obs["state"][:3], raw["robot0_eef_pos"], rtol=1e-6)
    np.testing.assert_allclose(obs["state"][-len(raw["object-state"]):], raw["object-state"], rtol=1e-6, atol=1e-7)
    assert env.action_space.shape == (ACTION_DIMS[env_id],)

    first = env.sim_state()
    env.step(env.action_space.sample())
    env.reset(seed=3)
    np.testing.assert_array_equal(env.sim_state(), first)
    env.reset(seed=4)
    assert not np.allclose(env.sim_state(), first)

    obs, reward, terminated, truncated, info = env.step(np.zeros(ACTION_DIMS[env_id]))
    assert obs["state"].shape == (STATE_DIMS[env_id],)
    assert (reward, terminated, truncated, info) == (0.0, False, False, {"success": False})
    env.close()


def test_time_limit_truncates():
    env = make_robosuite_env("lift", seed=0, max_episode_steps=3)
    ends = [env.step(np.zeros(7))[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]


def test_pixel_observation_is_an_upright_scene():
    requires_gl()
    size = 64
    env = make_robosuite_env("lift", seed=0, image_keys=["agentview_image"], image_size=size, cpu_render=True)
    obs, _ = env.reset(seed=0)
    rgb = obs["rgb"]
    assert rgb.shape == (3, size, size) and rgb.dtype == np.uint8 and env.observation_space.contains(obs)
    assert rgb.std() > PIXEL_STD_MIN
    # Upright, as in robomimic's datasets: the white table fills the bottom of agentview, the robot and the dark
    # floor behind it the top; robosuite's own (OpenGL) image is upside down.
    assert rgb[:, -size // 4:].mean() > rgb[:, : size // 4].mean()
    env.close()


def test_missing_gl_backend_is_one_line_naming_the_fix(monkeypatch):
    from robosuite.renderers.context import egl_context

    class BrokenContext:
        def __init__(self, **kwargs):
            raise RuntimeError("eglInitialize() failed\nsecond line")

    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setattr(egl_context, "EGLGLContext", BrokenContext)
    check_gl_backend.cache_clear()
    try:
        with pytest.raises(GLBackendError) as error:
            make_robosuite_env("lift", image_keys=["agentview_image"])
    finally:
        check_gl_backend.cache_clear()
    message = str(error.value)
    assert "\n" not in message and "MUJOCO_GL=egl" in message and "eglInitialize() failed" in message


def test_unknown_task_and_observation_keys_name_the_choices():
    with pytest.raises(ValueError, match="lift, can, square, transport"):
        make_robosuite_env("stack")
    with pytest.raises(ValueError, match="robot0_joint_pos"):
        make_robosuite_env("lift", obs_keys=["robot0_eef_pos", "cube_position"])


def test_lift_expert_succeeds():
    env = make_robosuite_env("lift", max_episode_steps=EXPERT_HORIZON)
    expert = make_expert("lift", noise=0.05, seed=0)
    successes = 0
    for seed in range(5):
        env.reset(seed=seed)
        expert.reset(env)
        done = False
        while not done:
            _, reward, terminated, truncated, info = env.step(expert(env))
            done = terminated or truncated
        successes += info["success"] and reward == 1.0
    assert successes >= 4


def test_demo_maker_round_trip(tmp_path):
    output = tmp_path / "lift" / "demos.hdf5"
    make_robosuite_demos.main(["--task", "lift", "--n-episodes", "2", "--output", str(output)])
    with h5py.File(output, "r") as f:
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "Lift"
        demos = [data[f"demo_{i}"] for i in range(len(data))]
        lengths = [demo.attrs["num_samples"] for demo in demos]
        assert data.attrs["total"] == sum(lengths)
        actions = np.concatenate([demo["actions"][()] for demo in demos])
        seed, states, demo_actions = demos[0].attrs["seed"], demos[0]["states"][()], demos[0]["actions"][()]
        assert demos[0]["dones"][-1] == 1 and demos[0]["rewards"][-1] == 1.0

    converted = convert_robomimic(str(output))
    np.testing.assert_array_equal(converted["traj_lengths"], lengths)
    np.testing.assert_array_equal(converted["actions"], actions)
    assert converted["states"].shape == (sum(lengths), STATE_DIMS["Lift"])
    saved = np.load(tmp_path / "lift" / "train.npz")
    np.testing.assert_array_equal(saved["actions"], actions)
    metadata = json.loads((tmp_path / "lift" / "metadata.json").read_text())
    assert metadata["expert"]["noise"] == 0.05 and metadata["expert"]["n_attempted"] == 2

    # The stored states are the states before each action: replaying the actions from the seed reproduces them.
    env = make_robosuite_env("lift", seed=env_args["env_kwargs"]["seed"])
    env.reset(seed=int(seed))
    for state, action in zip(states, demo_actions, strict=True):
        np.testing.assert_allclose(env.sim_state(), state, atol=1e-9)
        env.step(action)
    assert env.is_success()


def test_demo_maker_images_round_trip(tmp_path):
    requires_gl()
    output = tmp_path / "lift-img" / "demos.hdf5"
    n_steps, size = 4, 32
    make_robosuite_demos.main(["--task", "lift", "--n-episodes", "1", "--max-episode-steps", str(n_steps),
                               "--keep-failures", "--output", str(output), "--image-keys", "agentview_image",
                               "--image-size", str(size), "--cpu-render"])
    with h5py.File(output, "r") as f:
        images = f["data/demo_0/obs/agentview_image"][()]
    assert images.shape == (n_steps, size, size, 3) and images.dtype == np.uint8
    saved = np.load(tmp_path / "lift-img" / "train.npz")
    np.testing.assert_array_equal(saved["images"], images.transpose(0, 3, 1, 2))
    assert saved["actions"].shape == (n_steps, ACTION_DIMS["Lift"])
    assert json.loads((tmp_path / "lift-img" / "metadata.json").read_text())["image_keys"] == ["agentview_image"]
