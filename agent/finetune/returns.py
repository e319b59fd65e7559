"""Advantages and value targets over environment steps (the outer MDP of DPPO)."""

import torch


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, episode_ends: torch.Tensor,
                gamma: float, gae_lambda: float) -> torch.Tensor:
    """Generalized advantage estimation over a rollout of T chunk-steps in N envs.

    rewards, values: (T, N); next_values: (T, N) value of the observation after each step, already
    0 where the episode terminated and V(final observation) where it was truncated (time limit),
    so truncation bootstraps and termination does not; episode_ends: (T, N) bool, terminated or
    truncated, where the recursion restarts. The last row bootstraps from V of the last observation.

        delta_t = r_t + gamma * next_value_t - V(s_t)
        A_t = delta_t + gamma * lambda * (1 - end_t) * A_{t+1}

    With lambda = 1 the return seen from step t weighs the reward of step t' >= t by
    gamma ** (t' - t) (the paper prints gamma ** t). Returns advantages (T, N); the value
    targets are advantages + values (the lambda-returns).
    """
    n_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[0])
    continues = (~episode_ends).to(rewards.dtype)
    for t in reversed(range(n_steps)):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        next_advantage = delta + gamma * gae_lambda * continues[t] * next_advantage
        advantages[t] = next_advantage
    return advantages
