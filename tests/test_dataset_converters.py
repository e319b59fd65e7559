import json
import os
import sys

import h5py
import numpy as np
import pytest

from agent.dataset.sequence import StitchedSequenceDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "script", "dataset"))
import convert_d4rl  # noqa: E402
import convert_robomimic  # noqa: E402
from convert_d4rl import ConversionError, split_episodes  # noqa: E402
from convert_d4rl import convert_d4rl as convert_d4rl_arrays
from convert_robomimic import convert_robomimic as convert_robomimic_file  # noqa: E402
from convert_robomimic import sort_demo_names

N_STEPS = 10


def d4rl_arrays() -> dict:
    """10 steps in episodes [0..2] (terminal), [3] (terminal), [4..7] (timeout), [8..9] (no end flag)."""
    terminals = np.zeros(N_STEPS, dtype=bool)
    terminals[[2, 3]] = True
    timeouts = np.zeros(N_STEPS, dtype=bool)
    timeouts[7] = True
    return {
        "observations": np.arange(N_STEPS * 3, dtype=np.float32).reshape(N_STEPS, 3),
        "actions": -np.arange(N_STEPS * 2, dtype=np.float32).reshape(N_STEPS, 2),
        "rewards": np.arange(N_STEPS, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_d4rl_file(path, arrays: dict):
    if str(path).endswith(".npz"):
        np.savez(path, **arrays)
        return
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        f["infos/qpos"] = np.zeros((N_STEPS, 4))


def test_split_episodes_ends_on_terminals_and_timeouts_and_keeps_trailing_steps():
    arrays = d4rl_arrays()
    assert split_episodes(arrays["terminals"], arrays["timeouts"]).tolist() == [3, 1, 4, 2]
    assert split_episodes(arrays["terminals"]).tolist() == [3, 1, 6]
    assert split_episodes(np.zeros(5, dtype=bool)).tolist() == [5]
    last_step_ends = np.array([0, 1, 0, 1], dtype=np.float32)
    assert split_episodes(last_step_ends).tolist() == [2, 2]
    assert split_episodes(last_step_ends).dtype == np.int64


def test_convert_d4rl_keeps_order_drops_short_episodes_and_limits_count():
    arrays = d4rl_arrays()
    data = convert_d4rl_arrays(arrays, min_episode_length=2)
    kept = [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert data["traj_lengths"].tolist() == [3, 4, 2]
    np.testing.assert_array_equal(data["states"], arrays["observations"][kept])
    np.testing.assert_array_equal(data["actions"], arrays["actions"][kept])
    np.testing.assert_array_equal(data["rewards"], arrays["rewards"][kept])
    assert data["terminals"].tolist() == [False, False, True] + [False] * 6, "timeouts are not terminals"

    first_two = convert_d4rl_arrays(arrays, min_episode_length=2, max_episodes=2)
    assert first_two["traj_lengths"].tolist() == [3, 4]
    np.testing.assert_array_equal(first_two["states"], arrays["observations"][[0, 1, 2, 4, 5, 6, 7]])


@pytest.mark.parametrize("file_name", ["medium.hdf5", "medium.npz"])
def test_convert_d4rl_main_writes_a_dataset_the_sequence_dataset_loads(tmp_path, file_name):
    arrays = d4rl_arrays()
    source = tmp_path / file_name
    write_d4rl_file(source, arrays)
    out_dir = tmp_path / "out"
    convert_d4rl.main(["--input", str(source), "--output-dir", str(out_dir)])

    with np.load(out_dir / "train.npz") as data:
        np.testing.assert_array_equal(data["states"], arrays["observations"])
        np.testing.assert_array_equal(data["actions"], arrays["actions"])
        assert data["traj_lengths"].tolist() == [3, 1, 4, 2]
        assert data["traj_lengths"].sum() == len(data["states"]) == N_STEPS
        assert data["states"].dtype == np.float32 and data["traj_lengths"].dtype == np.int64
    metadata = json.loads((out_dir / "metadata.json").read_text())
    assert metadata["source"] == str(source)
    assert (metadata["n_episodes"], metadata["n_transitions"]) == (4, N_STEPS)
    returns = [0 + 1 + 2, 3, 4 + 5 + 6 + 7, 8 + 9]
    assert metadata["mean_return"] == pytest.approx(np.mean(returns))
    assert metadata["std_return"] == pytest.approx(np.std(returns))
    assert metadata["command"].startswith("python script/dataset/convert_d4rl.py --input ")

    dataset = StitchedSequenceDataset(str(out_dir / "train.npz"), horizon_steps=2, cond_steps=1)
    assert len(dataset) == 2 + 0 + 3 + 1
    assert (out_dir / "normalization.npz").is_file()


def test_convert_d4rl_missing_key_is_a_one_line_error(tmp_path):
    arrays = d4rl_arrays()
    del arrays["rewards"]
    with pytest.raises(ConversionError, match="lacks 'rewards': a D4RL-style file must contain observations") as info:
        convert_d4rl_arrays(arrays)
    assert "\n" not in str(info.value)

    source = tmp_path / "no_rewards.hdf5"
    write_d4rl_file(source, arrays)
    with pytest.raises(SystemExit) as exit_info:
        convert_d4rl.main(["--input", str(source), "--output-dir", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert str(source) in message and "'rewards'" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


DEMO_LENGTHS = {0: 3, 2: 2, 10: 4}
IMAGE_SHAPE = (4, 5, 3)


def demo_arrays(index: int) -> dict:
    """Arrays of demo_<index>, whose values start at 100 * index so that their order shows."""
    length = DEMO_LENGTHS[index]
    steps = 100 * index + np.arange(length, dtype=np.float64)
    return {
        "obs/pos": np.stack([steps, steps + 0.5], axis=1),
        "obs/gripper": steps[:, None] + 0.25,
        "obs/agentview_image": (np.arange(length * np.prod(IMAGE_SHAPE)) % 251 + index).astype(np.uint8).reshape(
            length, *IMAGE_SHAPE),
        "actions": np.stack([-steps, -steps - 0.5], axis=1),
        "rewards": (steps == steps[-1]).astype(np.float64),
        "dones": (steps == steps[-1]).astype(np.int64),
    }


def write_robomimic_file(path):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift"})
        for index in (10, 2, 0):
            for key, value in demo_arrays(index).items():
                data[f"demo_{index}/{key}"] = value


def test_sort_demo_names_uses_the_integer_index():
    assert sort_demo_names(["demo_10", "demo_2", "demo_0", "demo_1"]) == ["demo_0", "demo_1", "demo_2", "demo_10"]
    with pytest.raises(ConversionError, match="data/mask is not named demo_<i>"):
        sort_demo_names(["demo_0", "mask"])


def test_convert_robomimic_orders_demos_and_obs_keys_and_transposes_images(tmp_path):
    source = tmp_path / "lift.hdf5"
    write_robomimic_file(source)
    data = convert_robomimic_file(str(source), obs_keys=["gripper", "pos"], image_keys=["agentview_image"])

    demos = [demo_arrays(index) for index in (0, 2, 10)]
    assert data["traj_lengths"].tolist() == [3, 2, 4]
    assert data["traj_lengths"].sum() == len(data["states"]) == len(data["actions"]) == len(data["images"])
    expected_states = np.concatenate([np.concatenate([d["obs/gripper"], d["obs/pos"]], axis=1) for d in demos])
    np.testing.assert_array_equal(data["states"], expected_states.astype(np.float32))
    np.testing.assert_array_equal(data["actions"], np.concatenate([d["actions"] for d in demos]).astype(np.float32))
    np.testing.assert_array_equal(data["rewards"], np.concatenate([d["rewards"] for d in demos]))
    assert data["terminals"].tolist() == [False, False, True, False, True, False, False, False, True]
    assert data["images"].shape == (9, 3, 4, 5) and data["images"].dtype == np.uint8
    first_image = demos[0]["obs/agentview_image"][0]
    np.testing.assert_array_equal(data["images"][0], first_image.transpose(2, 0, 1))
    np.testing.assert_array_equal(data["images"][0, 1, 2, 3], first_image[2, 3, 1])

    two_images = convert_robomimic_file(str(source), ["pos"], ["agentview_image", "agentview_image"], max_episodes=2)
    assert two_images["traj_lengths"].tolist() == [3, 2]
    assert two_images["images"].shape == (5, 6, 4, 5)


def test_convert_robomimic_main_writes_a_dataset_the_sequence_dataset_loads(tmp_path):
    source = tmp_path / "lift.hdf5"
    write_robomimic_file(source)
    out_dir = tmp_path / "out"
    convert_robomimic.main(["--input", str(source), "--output-dir", str(out_dir), "--obs-keys", "pos", "gripper",
                            "--image-keys", "agentview_image", "--max-episodes", "2"])

    metadata = json.loads((out_dir / "metadata.json").read_text())
    assert (metadata["n_episodes"], metadata["n_transitions"], metadata["obs_dim"]) == (2, 5, 3)
    assert metadata["obs_keys"] == ["pos", "gripper"] and metadata["env_args"] == {"env_name": "Lift"}
    assert metadata["mean_return"] == pytest.approx(1.0)
    dataset = StitchedSequenceDataset(str(out_dir / "train.npz"), horizon_steps=2, cond_steps=1, obs_dim=3,
                                      action_dim=2, use_img=True)
    assert len(dataset) == 2 + 1
    assert dataset[0]["cond"]["rgb"].shape == (1, 3, 4, 5)
    assert (out_dir / "normalization.npz").is_file()


def test_convert_robomimic_missing_obs_key_lists_the_keys_the_file_has(tmp_path):
    source = tmp_path / "lift.hdf5"
    write_robomimic_file(source)
    expected = "/data/demo_0 has no obs key 'object': its obs keys are ['agentview_image', 'gripper', 'pos']"
    with pytest.raises(ConversionError, match=expected.replace("[", r"\[").replace("]", r"\]")) as info:
        convert_robomimic_file(str(source), obs_keys=["pos", "object"])
    assert "\n" not in str(info.value)

    with pytest.raises(SystemExit) as exit_info:
        convert_robomimic.main(["--input", str(source), "--output-dir", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert "'robot0_eef_pos'" in message and "'pos'" in message and "\n" not in message


# robomimic's v1.5 low-dim datasets (e.g. lift/ph/low_dim_v15.hdf5), as robomimic's dataset_states_to_obs.py writes
# them with robosuite 1.5: float64 actions, rewards, states and obs (robot0_eef_quat_site float32), int64 dones (1 at
# success and at the last step), obs and next_obs, attributes total / env_args (JSON, `type` 1 = robosuite) and
# num_samples / model_file, and filter keys under mask/ holding demo names as bytes.
LIFT_V15_OBS = {"object": 10, "robot0_joint_pos": 7, "robot0_joint_pos_cos": 7, "robot0_joint_pos_sin": 7,
                "robot0_joint_vel": 7, "robot0_joint_acc": 7, "robot0_eef_pos": 3, "robot0_eef_quat": 4,
                "robot0_eef_quat_site": 4, "robot0_gripper_qpos": 2, "robot0_gripper_qvel": 2}
V15_LENGTHS = [5, 3, 4, 6, 2]
V15_MASKS = {"train": ["demo_0", "demo_2", "demo_3", "demo_4"], "valid": ["demo_1"], "20_percent": ["demo_3"]}


def write_robomimic_v15_lift(path, seed=0):
    rng = np.random.default_rng(seed)
    env_args = {"env_name": "Lift", "env_version": "1.5.1", "type": 1,
                "env_kwargs": {"robots": ["Panda"], "control_freq": 20, "reward_shaping": False, "ignore_done": True,
                               "use_object_obs": True, "use_camera_obs": False, "has_renderer": False,
                               "has_offscreen_renderer": False,
                               "controller_configs": {"type": "BASIC", "body_parts": {"right": {"type": "OSC_POSE"}}}}}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(V15_LENGTHS)
        data.attrs["env_args"] = json.dumps(env_args, indent=4)
        for index, length in enumerate(V15_LENGTHS):
            demo = data.create_group(f"demo_{index}")
            demo.attrs["num_samples"] = length
            demo.attrs["model_file"] = "<mujoco model='base'></mujoco>"
            demo["actions"] = rng.uniform(-1, 1, size=(length, 7))
            demo["states"] = rng.normal(size=(length, 32))
            demo["rewards"] = np.eye(1, length, length - 1)[0]
            demo["dones"] = np.eye(1, length, length - 1, dtype=np.int64)[0]
            trajectory = {key: rng.normal(size=(length + 1, dim)) for key, dim in LIFT_V15_OBS.items()}
            for key, values in trajectory.items():
                dtype = np.float32 if key == "robot0_eef_quat_site" else np.float64
                demo[f"obs/{key}"] = values[:-1].astype(dtype)
                demo[f"next_obs/{key}"] = values[1:].astype(dtype)
        for key, names in V15_MASKS.items():
            f[f"mask/{key}"] = np.array(names, dtype="S")
    return env_args


def test_convert_robomimic_reads_a_file_laid_out_as_robomimics_v15_datasets(tmp_path):
    source = tmp_path / "low_dim_v15.hdf5"
    env_args = write_robomimic_v15_lift(source)
    out_dir = tmp_path / "lift"
    convert_robomimic.main(["--input", str(source), "--output-dir", str(out_dir), "--filter-key", "train"])
    data = np.load(out_dir / "train.npz")
    assert data["traj_lengths"].tolist() == [V15_LENGTHS[i] for i in (0, 2, 3, 4)]
    assert data["states"].shape == (sum(data["traj_lengths"]), 19) and data["states"].dtype == np.float32  # Lift: 19
    assert data["actions"].dtype == np.float32 and data["terminals"].dtype == bool
    with h5py.File(source, "r") as f:
        demo = f["data/demo_2"]
        first = np.concatenate([demo[f"obs/{key}"][0] for key in convert_robomimic.DEFAULT_OBS_KEYS])
    np.testing.assert_array_equal(data["states"][V15_LENGTHS[0]], first.astype(np.float32))
    metadata = json.loads((out_dir / "metadata.json").read_text())
    assert metadata["env_args"] == env_args and metadata["filter_key"] == "train" and metadata["mean_return"] == 1.0

    every = convert_robomimic_file(str(source))
    assert every["traj_lengths"].tolist() == V15_LENGTHS
    assert convert_robomimic_file(str(source), filter_key="20_percent")["traj_lengths"].tolist() == [V15_LENGTHS[3]]
    with pytest.raises(ConversionError, match=r"no filter key 'test' \(mask/test\): the file's filter keys are "
                                              r"\['20_percent', 'train', 'valid'\]"):
        convert_robomimic_file(str(source), filter_key="test")


def test_convert_robomimic_takes_the_demos_and_arrays_robomimics_own_reader_takes(tmp_path):
    """robomimic's SequenceDataset (robomimic 0.3.0, installed without its dependencies) is the oracle."""
    sequence_dataset = pytest.importorskip("robomimic.utils.dataset").SequenceDataset
    source = tmp_path / "low_dim_v15.hdf5"
    write_robomimic_v15_lift(source)
    obs_keys = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object", "robot0_eef_quat_site"]
    for filter_key in ("train", "valid", None):
        reference = sequence_dataset(str(source), obs_keys, ("actions", "rewards", "dones"), hdf5_cache_mode=None,
                                     filter_by_attribute=filter_key, load_next_obs=False)
        trajectories = [reference.get_trajectory_at_index(i) for i in range(len(reference.demos))]
        data = convert_robomimic_file(str(source), obs_keys=obs_keys, filter_key=filter_key)
        assert data["traj_lengths"].tolist() == [len(t["actions"]) for t in trajectories]
        np.testing.assert_array_equal(
            data["states"], np.concatenate([np.concatenate([t["obs"][key] for key in obs_keys], axis=1)
                                            for t in trajectories]).astype(np.float32))
        np.testing.assert_array_equal(data["actions"], np.concatenate([t["actions"] for t in trajectories]).astype(
            np.float32))
        np.testing.assert_array_equal(data["terminals"], np.concatenate([t["dones"] for t in trajectories]) == 1)
        reference.close_and_delete_hdf5_handle()
