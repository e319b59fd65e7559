import math

import numpy as np
import pytest
import torch

from dppo.schedulers import RunningMeanStd, RunningRewardScaler, WarmupCosineLR


def make_scheduler(**kwargs):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=123.0)
    return optimizer, WarmupCosineLR(optimizer, **kwargs)


def lr_sequence(optimizer, scheduler, n_steps):
    """lrs of all param groups at the current step and after each of `n_steps` steps: (n_steps + 1, n_groups)."""
    lrs = [[group["lr"] for group in optimizer.param_groups]]
    for _ in range(n_steps):
        optimizer.step()
        scheduler.step()
        lrs.append([group["lr"] for group in optimizer.param_groups])
    return np.array(lrs)


def test_warmup_then_cosine_then_min_lr():
    optimizer, scheduler = make_scheduler(first_cycle_steps=10, warmup_steps=4, max_lr=1e-3, min_lr=1e-5)
    lrs = lr_sequence(optimizer, scheduler, 14)
    assert np.all(lrs[:, 0] == lrs[:, 1]), "all param groups share the lr"
    lrs = lrs[:, 0]
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[2] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 2 / 4)
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[7] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 3 / 6)) / 2)
    assert np.all(np.diff(lrs[4:11]) < 0)
    assert np.allclose(lrs[10:], 1e-5)


def test_no_warmup_starts_at_max_lr():
    optimizer, scheduler = make_scheduler(first_cycle_steps=5, warmup_steps=0, max_lr=0.1, min_lr=0.0)
    lrs = lr_sequence(optimizer, scheduler, 6)[:, 0]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.0)


def test_equal_min_and_max_lr_is_constant():
    optimizer, scheduler = make_scheduler(first_cycle_steps=20, warmup_steps=5, max_lr=3e-4, min_lr=3e-4)
    assert np.allclose(lr_sequence(optimizer, scheduler, 30), 3e-4)


def test_state_dict_round_trip_continues_the_sequence():
    optimizer, scheduler = make_scheduler(first_cycle_steps=12, warmup_steps=3, max_lr=1e-3, min_lr=1e-4)
    lr_sequence(optimizer, scheduler, 5)
    state = scheduler.state_dict()
    expected = lr_sequence(optimizer, scheduler, 8)

    resumed_optimizer, resumed = make_scheduler(first_cycle_steps=12, warmup_steps=3, max_lr=1e-3, min_lr=1e-4)
    resumed.load_state_dict(state)
    actual = lr_sequence(resumed_optimizer, resumed, 8)
    np.testing.assert_allclose(actual[1:], expected[1:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(first_cycle_steps=10, warmup_steps=2, max_lr=1e-4, min_lr=1e-3), "min_lr <= max_lr"),
        (dict(first_cycle_steps=10, warmup_steps=11, max_lr=1e-3, min_lr=1e-4), "warmup_steps <= first_cycle_steps"),
        (dict(first_cycle_steps=10, warmup_steps=-1, max_lr=1e-3, min_lr=1e-4), "warmup_steps <= first_cycle_steps"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scheduler(**kwargs)


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(50, 4))
    rms = RunningMeanStd(shape=(4,), epsilon=1e-12)
    for batch in np.split(data, [7, 20, 21]):
        rms.update(batch)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-9)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-9)

    restored = RunningMeanStd(shape=(4,))
    restored.load_state_dict(rms.state_dict())
    np.testing.assert_array_equal(restored.mean, rms.mean)
    assert restored.count == rms.count
    with pytest.raises(ValueError, match="pass"):
        rms.update(np.zeros((3, 5)))


def moments_with_prior(returns, prior_count=1e-4):
    """Variance of `returns` pooled with the RunningMeanStd prior (mean 0, var 1, weight `prior_count`)."""
    returns = np.asarray(returns, dtype=np.float64)
    total = prior_count + len(returns)
    mean = returns.sum() / total
    return (prior_count * 1.0 + (returns**2).sum()) / total - mean**2


def test_reward_scaler_hand_computed_three_steps_two_envs():
    scaler = RunningRewardScaler(n_envs=2, gamma=0.5)
    rewards = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    dones = [[False, True], [False, False], [True, False]]
    # Discounted returns per step; env 1 restarts after step 0, env 0 after step 2:
    # step 0: [1, 2]; step 1: [0.5 * 1 + 3, 0 + 4] = [3.5, 4]; step 2: [0.5 * 3.5 + 5, 0.5 * 4 + 6] = [6.75, 8].
    returns_seen = [[1.0, 2.0], [1.0, 2.0, 3.5, 4.0], [1.0, 2.0, 3.5, 4.0, 6.75, 8.0]]
    for reward, done, seen in zip(rewards, dones, returns_seen):
        out = scaler(torch.tensor(reward), torch.tensor(done))
        expected = np.array(reward) / np.sqrt(moments_with_prior(seen) + 1e-8)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(scaler.ret, [0.0, 8.0])


def test_reward_scaler_state_dict_round_trip_gives_identical_outputs():
    rng = torch.Generator().manual_seed(0)
    rewards = torch.randn(20, 3, generator=rng, dtype=torch.float64)
    dones = torch.rand(20, 3, generator=rng) < 0.2
    scaler = RunningRewardScaler(n_envs=3, gamma=0.99)
    for t in range(10):
        scaler(rewards[t], dones[t])
    restored = RunningRewardScaler(n_envs=3, gamma=0.99)
    restored.load_state_dict(scaler.state_dict())
    for t in range(10, 20):
        assert torch.equal(scaler(rewards[t], dones[t]), restored(rewards[t], dones[t]))
    with pytest.raises(ValueError, match="n_envs"):
        RunningRewardScaler(n_envs=4, gamma=0.99).load_state_dict(scaler.state_dict())


def test_reward_scaler_clips():
    scaler = RunningRewardScaler(n_envs=2, gamma=0.0, clip=0.5)
    out = scaler(torch.tensor([10.0, -10.0]), torch.tensor([False, False]))
    assert out.tolist() == [0.5, -0.5]


def test_warmup_as_long_as_the_cycle_ends_at_min_lr():
    optimizer, scheduler = make_scheduler(first_cycle_steps=1, warmup_steps=1, max_lr=1e-3, min_lr=1e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
