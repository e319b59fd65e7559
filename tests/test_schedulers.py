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


def test_running_mean_std_one_batch_gives_the_unbiased_variance():
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 4))
    rms = RunningMeanStd(shape=(4,), epsilon=1e-12)
    rms.update(data)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-9)
    np.testing.assert_allclose(rms.var, data.var(0, ddof=1), rtol=1e-9)  # M2 / (count - 1), as the reference

    restored = RunningMeanStd(shape=(4,))
    restored.load_state_dict(rms.state_dict())
    np.testing.assert_array_equal(restored.mean, rms.mean)
    assert restored.count == rms.count
    with pytest.raises(ValueError, match="pass"):
        rms.update(np.zeros((3, 5)))


def test_reward_scaler_matches_the_reference_once_per_iteration():
    """Expected values: the reference's util/reward_scaling.py (irom-lab/dppo) run on the same two rollouts.

    Rollout 1 (gamma 0.5): env 0 starts an episode at step 0; env 1 at steps 0 and 1. Running returns
    env 0: 1, 3.5, 6.75; env 1: 2, 4, 8. One statistics update from all six, one std for every reward.
    """
    scaler = RunningRewardScaler(n_envs=2, gamma=0.5)
    rewards = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    firsts = torch.tensor([[True, True], [False, True], [False, False]])
    out = scaler(rewards, firsts)
    assert out.dtype == torch.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out.numpy(), [[0.36984705292527253, 0.7396941058505451],
                                             [1.1095411587758175, 1.4793882117010901],
                                             [1.8492352646263626, 2.219082317551635]], rtol=1e-6)
    np.testing.assert_allclose(scaler.ret, [6.75, 8.0])
    assert scaler.rms.var == pytest.approx(7.310644649259313, rel=1e-12)

    # rollout 2: env 0 restarts, env 1 carries its running return 8 over
    out = scaler(torch.tensor([[-1.0, 0.5], [2.0, 8.0]]), torch.tensor([[True, False], [False, False]]))
    np.testing.assert_allclose(out.numpy(), [[-0.2801645500622296, 0.1400822750311148],
                                             [0.5603291001244592, 2.241316400497837]], rtol=1e-6)
    np.testing.assert_allclose(scaler.ret, [1.5, 10.25])


def test_reward_scaler_every_reward_of_a_rollout_shares_one_std():
    """Applied step by step, early rewards would be divided by a tiny std (up to ~200x larger)."""
    scaler = RunningRewardScaler(n_envs=3, gamma=0.99)
    rewards = torch.full((100, 3), 3.0, dtype=torch.float64)
    out = scaler(rewards, torch.zeros(100, 3, dtype=torch.bool))
    assert torch.allclose(out, out[0, 0].expand_as(out))


def test_reward_scaler_state_dict_round_trip_gives_identical_outputs():
    rng = torch.Generator().manual_seed(0)
    rewards = torch.randn(20, 3, generator=rng, dtype=torch.float64)
    firsts = torch.rand(20, 3, generator=rng) < 0.2
    scaler = RunningRewardScaler(n_envs=3, gamma=0.99)
    scaler(rewards[:10], firsts[:10])
    restored = RunningRewardScaler(n_envs=3, gamma=0.99)
    restored.load_state_dict(scaler.state_dict())
    assert torch.equal(scaler(rewards[10:], firsts[10:]), restored(rewards[10:], firsts[10:]))
    with pytest.raises(ValueError, match="n_envs"):
        RunningRewardScaler(n_envs=4, gamma=0.99).load_state_dict(scaler.state_dict())
    with pytest.raises(ValueError, match="n_steps, n_envs"):
        scaler(rewards[0], firsts[0])


def test_reward_scaler_clips():
    scaler = RunningRewardScaler(n_envs=2, gamma=0.0, clip=0.5)
    out = scaler(torch.tensor([[10.0, -10.0]]), torch.tensor([[False, False]]))
    assert out.tolist() == [[0.5, -0.5]]


def test_warmup_as_long_as_the_cycle_ends_at_min_lr():
    optimizer, scheduler = make_scheduler(first_cycle_steps=1, warmup_steps=1, max_lr=1e-3, min_lr=1e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
