"""GAE over chunk-steps: termination cuts the bootstrap, truncation bootstraps from V(final obs), gamma^(t'-t)."""

import pytest
import torch

from agent.finetune.returns import compute_gae, segment_ends

F, T = False, True


def test_hand_computed_termination_and_truncation():
    """gamma 0.9, lambda 0.8 (gamma * lambda = 0.72); columns are envs, rows steps."""
    rewards = torch.tensor([[1.0, 0.5, 0.0], [2.0, -1.0, 0.0], [3.0, 2.0, 0.0], [4.0, 1.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 0.0], [1.0, 2.0, 0.0], [1.5, 0.5, 0.0], [2.0, 1.5, 0.0]])
    # env 0 terminates at step 1 (next value 0); env 1 is truncated at step 2 and bootstraps from V(final obs) = 3,
    # not from V(first obs of the next episode) = 1.5; env 2 never ends; the last row bootstraps from V(last obs)
    next_values = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.5, 0.0], [2.0, 3.0, 0.0], [2.5, 0.7, 10.0]])
    episode_ends = torch.tensor([[F, F, F], [T, F, F], [F, T, F], [F, F, F]])
    # env 0: deltas 1.4, 1.0, 3.3, 4.25 -> A3 = 4.25, A2 = 3.3 + 0.72 * 4.25, A1 = 1.0 (terminated), A0 = 1.4 + 0.72
    # env 1: deltas 1.3, -2.55, 4.2, 0.13 -> A3 = 0.13, A2 = 4.2 (truncated, restarts), A1 = -2.55 + 0.72 * 4.2, ...
    # env 2: deltas 0, 0, 0, 1 + 0.9 * 10 -> A_t = 10 * 0.72 ** (3 - t)
    expected = torch.tensor([
        [2.12, 1.64128, 3.73248],
        [1.0, 0.474, 5.184],
        [6.36, 4.2, 7.2],
        [4.25, 0.13, 10.0],
    ])
    advantages = compute_gae(rewards, values, next_values, episode_ends, gamma=0.9, gae_lambda=0.8)
    torch.testing.assert_close(advantages, expected)


@pytest.mark.parametrize("end_step", [None, 1])
def test_lambda_one_zero_values_is_discounted_return_from_t(end_step):
    gamma = 0.9
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    zeros = torch.zeros(4, 1)
    episode_ends = torch.zeros(4, 1, dtype=torch.bool)
    episode_ends[-1] = True
    if end_step is not None:
        episode_ends[end_step] = True
    advantages = compute_gae(rewards, zeros, zeros, episode_ends, gamma=gamma, gae_lambda=1.0)[:, 0]

    episode_of = torch.cumsum(torch.cat([torch.zeros(1), episode_ends[:-1, 0].float()]), 0)
    shifted, absolute = torch.zeros(4), torch.zeros(4)
    for t in range(4):
        for t2 in range(t, 4):
            if episode_of[t2] == episode_of[t]:
                shifted[t] += gamma ** (t2 - t) * rewards[t2, 0]
                absolute[t] += gamma**t2 * rewards[t2, 0]
    torch.testing.assert_close(advantages, shifted)
    assert not torch.allclose(advantages, absolute), "the paper's printed gamma ** t weighting is not used"
    if end_step is None:
        torch.testing.assert_close(advantages, torch.tensor([8.146, 7.94, 6.6, 4.0]))
    else:
        torch.testing.assert_close(advantages, torch.tensor([2.8, 2.0, 6.6, 4.0]))


def test_lambda_zero_gives_one_step_td_errors():
    gen = torch.Generator().manual_seed(0)
    rewards, values, next_values = (torch.randn(4, 3, generator=gen) for _ in range(3))
    episode_ends = torch.rand(4, 3, generator=gen) < 0.3
    advantages = compute_gae(rewards, values, next_values, episode_ends, gamma=0.99, gae_lambda=0.0)
    torch.testing.assert_close(advantages, rewards + 0.99 * next_values - values)


def test_inputs_are_not_modified():
    rewards, values, next_values = torch.ones(3, 2), torch.zeros(3, 2), torch.ones(3, 2)
    episode_ends = torch.tensor([[F, T], [F, F], [T, F]])
    copies = [x.clone() for x in (rewards, values, next_values, episode_ends)]
    compute_gae(rewards, values, next_values, episode_ends, gamma=0.9, gae_lambda=0.95)
    for original, copy in zip((rewards, values, next_values, episode_ends), copies):
        assert torch.equal(original, copy)


def test_td_lambda_over_a_replay_restarts_at_an_episode_start_without_an_end():
    """Two 2-step rollouts of one env, the second after a reset (evaluation, resume, reset_at_iteration), its
    rewards 100, critic zero: the first episode's targets stay 0. Without the cut at the start they took the next
    episode's returns."""
    rewards = torch.tensor([[0.0], [0.0], [100.0], [100.0]])
    ends = torch.tensor([[False], [False], [False], [True]])
    firsts = torch.tensor([[True], [False], [True], [False]])
    cut = torch.zeros_like(ends)
    zeros = torch.zeros_like(rewards)
    targets = compute_gae(rewards, zeros, zeros, segment_ends(ends, firsts, cut), gamma=0.99, gae_lambda=0.95)
    assert targets[:2, 0].tolist() == [0.0, 0.0]
    assert targets[2:, 0].tolist() == pytest.approx([100 + 0.99 * 0.95 * 100, 100])
    leaked = compute_gae(rewards, zeros, zeros, ends, gamma=0.99, gae_lambda=0.95)
    assert leaked[:2, 0].min() > 50, "cut only at episode ends, the first episode takes the second's returns"


def test_a_cut_step_is_no_bootstrap_for_the_step_before_it():
    """A worker restart at step 2 inserts a transition that never happened (reward 0, truncated): step 1's
    advantage bootstraps from V(its next obs) and does not chain into the cut step's advantage."""
    rewards = torch.tensor([[1.0], [1.0], [0.0], [1.0]])
    values = torch.tensor([[0.5], [0.5], [3.0], [0.5]])
    next_values = torch.tensor([[0.5], [3.0], [3.0], [0.5]])
    ends = torch.tensor([[False], [False], [True], [False]])
    firsts = torch.tensor([[True], [False], [False], [True]])
    cut = torch.tensor([[False], [False], [True], [False]])
    advantages = compute_gae(rewards, values, next_values, segment_ends(ends, firsts, cut), gamma=0.9,
                             gae_lambda=0.8)
    assert advantages[1, 0].item() == pytest.approx(1 + 0.9 * 3.0 - 0.5)  # its own TD error only
    chained = compute_gae(rewards, values, next_values, ends, gamma=0.9, gae_lambda=0.8)
    assert chained[1, 0].item() != pytest.approx(advantages[1, 0].item())
