"""Windows of the stitched dataset never cross an episode; min/max normalization beside the data round-trips."""

import os

import numpy as np
import pytest
import torch

from agent.dataset.sequence import StitchedSequenceDataset, window_indices
from dppo.normalization import OBS_CLIP, MinMaxNormalizer

LENGTHS = [5, 2, 7]


def write_dataset(directory, lengths=LENGTHS):
    """states: [episode, step, noise]; actions: [10 * episode + step, -step]. Returns path, states, actions."""
    episode = np.concatenate([np.full(n, e) for e, n in enumerate(lengths)]).astype(np.float32)
    step = np.concatenate([np.arange(n) for n in lengths]).astype(np.float32)
    noise = np.random.default_rng(0).normal(size=len(step)).astype(np.float32)
    states = np.stack([episode, step, noise], axis=1)
    actions = np.stack([10 * episode + step, -step], axis=1)
    path = os.path.join(directory, "toy.npz")
    np.savez(path, states=states, actions=actions, traj_lengths=np.array(lengths))
    return path, states, actions


def decoded_windows(dataset):
    """(episode, step) of every window's obs (W, To, 2) and actions (W, Ta, 2), from the normalized batches."""
    batch = dataset.get_batch(torch.arange(len(dataset)))
    obs = dataset.normalizer.unnormalize_obs(batch["cond"]["state"]).numpy()
    actions = dataset.normalizer.unnormalize_action(batch["actions"]).numpy()
    obs_ids = np.rint(obs[..., :2]).astype(int)
    action_step = np.rint(-actions[..., 1]).astype(int)
    action_episode = np.rint((actions[..., 0] - action_step) / 10).astype(int)
    return obs_ids, np.stack([action_episode, action_step], axis=-1), batch


@pytest.mark.parametrize("cond_steps, horizon_steps", [(2, 3), (3, 1), (1, 7), (4, 2)])
def test_windows_stay_inside_one_episode(tmp_path, cond_steps, horizon_steps):
    path, _, _ = write_dataset(tmp_path)
    dataset = StitchedSequenceDataset(path, horizon_steps=horizon_steps, cond_steps=cond_steps, obs_dim=3, action_dim=2)
    assert len(dataset) == sum(max(0, n - horizon_steps + 1) for n in LENGTHS)
    obs_ids, action_ids, batch = decoded_windows(dataset)
    assert obs_ids.shape == (len(dataset), cond_steps, 2) and action_ids.shape == (len(dataset), horizon_steps, 2)
    assert batch["cond"]["state"].shape == (len(dataset), cond_steps, 3)
    assert batch["actions"].shape == (len(dataset), horizon_steps, 2)

    starts = set()
    for obs, act in zip(obs_ids, action_ids):
        episode, start = act[0]
        assert np.all(act[:, 0] == episode) and np.all(obs[:, 0] == episode), "one episode per window"
        np.testing.assert_array_equal(act[:, 1], start + np.arange(horizon_steps))
        assert act[-1, 1] < LENGTHS[episode]
        np.testing.assert_array_equal(obs[:, 1], np.maximum(start - cond_steps + 1 + np.arange(cond_steps), 0))
        starts.add((episode, start))
    expected_starts = {(e, s) for e, n in enumerate(LENGTHS) for s in range(n - horizon_steps + 1)}
    assert starts == expected_starts and len(starts) == len(dataset)


def test_history_before_episode_start_repeats_first_obs(tmp_path):
    path, states, _ = write_dataset(tmp_path)
    dataset = StitchedSequenceDataset(path, horizon_steps=2, cond_steps=3)
    first_of_episode_2 = dataset[LENGTHS[0] - 1]  # windows of episode 0: starts 0..3; episode 1: start 0 -> index 4
    assert torch.equal(first_of_episode_2["cond"]["state"][0], first_of_episode_2["cond"]["state"][2])
    item = dataset[0]
    expected = dataset.normalizer.normalize_obs(states[[0, 0, 0]])
    np.testing.assert_allclose(item["cond"]["state"].numpy(), expected, rtol=0, atol=1e-6)
    obs_index, action_index = window_indices(np.array(LENGTHS), horizon_steps=2, cond_steps=3)
    assert obs_index[LENGTHS[0] - 1].tolist() == [5, 5, 5] and action_index[LENGTHS[0] - 1].tolist() == [5, 6]


def test_max_n_episodes_keeps_full_file_statistics(tmp_path):
    path, states, actions = write_dataset(tmp_path)
    dataset = StitchedSequenceDataset(path, horizon_steps=2, cond_steps=1, max_n_episodes=2)
    assert len(dataset) == (LENGTHS[0] - 1) + (LENGTHS[1] - 1)
    assert dataset.states.shape == (LENGTHS[0] + LENGTHS[1], 3)
    np.testing.assert_array_equal(dataset.normalizer.stats["obs_max"], states.max(0))
    np.testing.assert_array_equal(dataset.normalizer.stats["action_min"], actions.min(0))
    obs_ids, _, _ = decoded_windows(dataset)
    assert obs_ids[..., 0].max() == 1


def test_normalization_file_values_and_round_trip(tmp_path):
    path, states, actions = write_dataset(tmp_path)
    dataset = StitchedSequenceDataset(path, horizon_steps=3, cond_steps=2)
    norm_path = tmp_path / "normalization.npz"
    assert norm_path.is_file()
    saved = MinMaxNormalizer.load(str(norm_path))
    for key, value in (("obs_min", states.min(0)), ("obs_max", states.max(0)), ("action_min", actions.min(0)),
                       ("action_max", actions.max(0))):
        np.testing.assert_array_equal(saved.stats[key], value)
    for normalized in (dataset.states, dataset.actions):
        assert normalized.min() >= -1 and normalized.max() <= 1
        torch.testing.assert_close(normalized.min(0).values, torch.full((normalized.shape[1],), -1.0))
        torch.testing.assert_close(normalized.max(0).values, torch.full((normalized.shape[1],), 1.0), atol=1e-5,
                                   rtol=0)

    np.testing.assert_allclose(saved.unnormalize_obs(saved.normalize_obs(states)), states, atol=1e-5)
    np.testing.assert_allclose(saved.unnormalize_action(saved.normalize_action(actions)), actions, atol=1e-5)
    torch_actions = torch.as_tensor(actions, dtype=torch.float64)
    back = saved.unnormalize_action(saved.normalize_action(torch_actions))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float64
    torch.testing.assert_close(back, torch_actions)
    torch_states = torch.as_tensor(states)
    torch.testing.assert_close(saved.normalize_obs(torch_states), torch.as_tensor(saved.normalize_obs(states)))


def test_two_jobs_saving_one_normalization_file_at_once_both_succeed(tmp_path, monkeypatch):
    """Jobs of a sweep that share a dataset write its normalization file at the same moment (CI once lost a
    job to this): here a second job's whole save lands between the first job's write and its rename."""
    path = str(tmp_path / "normalization.npz")
    first = MinMaxNormalizer(obs_min=[0.0], obs_max=[1.0], action_min=[-1.0], action_max=[1.0])
    second = MinMaxNormalizer(obs_min=[0.0], obs_max=[2.0], action_min=[-1.0], action_max=[1.0])
    real_savez = np.savez

    def savez_then_other_job_saves(file, **arrays):
        real_savez(file, **arrays)
        monkeypatch.setattr(np, "savez", real_savez)
        second.save(path)

    monkeypatch.setattr(np, "savez", savez_then_other_job_saves)
    first.save(path)
    np.testing.assert_array_equal(MinMaxNormalizer.load(path).stats["obs_max"], [1.0])  # the last rename wins
    assert os.listdir(tmp_path) == ["normalization.npz"]


def test_missing_file_names_make_command(tmp_path):
    missing = str(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError, match="make data-hopper"):
        StitchedSequenceDataset(missing, horizon_steps=4, make_command="make data-hopper")


def test_wrong_dims_name_both_dims(tmp_path):
    path, _, _ = write_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"obs dim 3 .*obs_dim=11"):
        StitchedSequenceDataset(path, horizon_steps=4, obs_dim=11, action_dim=2)
    with pytest.raises(ValueError, match=r"action dim 2 .*action_dim=3"):
        StitchedSequenceDataset(path, horizon_steps=4, obs_dim=3, action_dim=3)


def test_no_episode_long_enough():
    with pytest.raises(ValueError, match="horizon_steps=8"):
        window_indices(np.array([5, 2, 7]), horizon_steps=8, cond_steps=1)


def test_constant_dims_normalize_to_the_centre_and_observations_are_clipped():
    # dim 0 varies over [0, 2]; dim 1 is constant in the data (e.g. a contact force that is always 0)
    normalizer = MinMaxNormalizer(obs_min=[0.0, 0.0], obs_max=[2.0, 0.0], action_min=[-1.0], action_max=[1.0])
    obs = np.array([[1.0, 0.0], [1.0, 0.5], [100.0, -3.0]], dtype=np.float32)
    expected = np.array([[0.0, 0.0], [0.0, 0.0], [OBS_CLIP, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(normalizer.normalize_obs(obs), expected, atol=1e-5)
    torch.testing.assert_close(normalizer.normalize_obs(torch.as_tensor(obs)), torch.as_tensor(expected),
                               atol=1e-5, rtol=0)


def test_padded_windows_start_at_every_step_and_repeat_the_last_action():
    # two episodes of 5 and 3 steps (global steps 0-4 and 5-7), chunks of 4 actions
    obs, actions = window_indices(np.array([5, 3]), horizon_steps=4, cond_steps=1, pad_after=3)
    assert obs[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # every state starts a window
    assert actions.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4], [3, 4, 4, 4], [4, 4, 4, 4],
                                [5, 6, 7, 7], [6, 7, 7, 7], [7, 7, 7, 7]]
    unpadded_obs, _ = window_indices(np.array([5, 3]), horizon_steps=4, cond_steps=1)
    assert unpadded_obs[:, 0].tolist() == [0, 1]  # the 3-step episode is too short for a full chunk
    with pytest.raises(ValueError, match="pad_after=4 must be in 0..horizon_steps - 1"):
        window_indices(np.array([5]), horizon_steps=4, cond_steps=1, pad_after=4)
