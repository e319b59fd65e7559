"""Advantages and value targets over environment steps (the outer MDP of DPPO)."""

import torch

from agent.finetune.rollout import flatten_steps, index_samples, map_batches


def segment_ends(ends: torch.Tensor, firsts: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """(T, N) bool: where a return recursion over time must restart after step t.

    After an episode end; before the first step of an episode (in a replay, episodes are cut without an end by
    evaluations, resumes and `reset_at_iteration`: the step before the reset must not take the next episode's
    return); and before a cut step (a transition that never happened: worker restart, simulator failure), whose
    return is not the episode's. ends, firsts, cut: (T, N) bool.
    """
    restarts_next = torch.zeros_like(ends)
    restarts_next[:-1] = firsts[1:] | cut[1:]
    return ends | restarts_next


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, breaks: torch.Tensor,
                gamma: float, gae_lambda: float) -> torch.Tensor:
    """Generalized advantage estimation over a rollout of T chunk-steps in N envs.

    rewards, values: (T, N); next_values: (T, N) value of the observation after each step, already
    0 where the episode terminated and V(final observation) where it was truncated (time limit),
    so truncation bootstraps and termination does not; breaks: (T, N) bool, where the recursion
    restarts (`segment_ends`). The last row bootstraps from V of the last observation.

        delta_t = r_t + gamma * next_value_t - V(s_t)
        A_t = delta_t + gamma * lambda * (1 - break_t) * A_{t+1}

    With lambda = 1 the return seen from step t weighs the reward of step t' >= t by
    gamma ** (t' - t) (the paper prints gamma ** t). Returns advantages (T, N); the value
    targets are advantages + values (the lambda-returns).
    """
    n_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[0])
    continues = (~breaks).to(rewards.dtype)
    for t in reversed(range(n_steps)):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        next_advantage = delta + gamma * gae_lambda * continues[t] * next_advantage
        advantages[t] = next_advantage
    return advantages


def gae_from_critic(value_fn, obs: dict, next_obs: dict, rewards: torch.Tensor, terminated: torch.Tensor,
                    breaks: torch.Tensor, gamma: float, gae_lambda: float,
                    batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and V(s), both (T, N), with V evaluated in batches of `batch_size` without gradients.

    obs, next_obs: dicts of (T, N, ...); value_fn: cond dict of (B, ...) -> (B,); breaks: `segment_ends`.
    next_obs holds an ended episode's final observation, so a truncated step bootstraps from V(final obs)
    and a terminated one from nothing. The value targets are advantages + values (the lambda-returns).
    """
    n_steps, n_envs = rewards.shape
    obs_flat, next_obs_flat = flatten_steps(obs), flatten_steps(next_obs)
    n_samples = n_steps * n_envs
    values = map_batches(lambda idx: value_fn(index_samples(obs_flat, idx)), n_samples, batch_size, rewards.device)
    next_values = map_batches(lambda idx: value_fn(index_samples(next_obs_flat, idx)), n_samples, batch_size,
                              rewards.device)
    values = values.view(n_steps, n_envs)
    next_values = next_values.view(n_steps, n_envs) * (~terminated)
    return compute_gae(rewards, values, next_values, breaks, gamma, gae_lambda), values


def episode_returns_to_go(rewards: torch.Tensor, ends: torch.Tensor, firsts: torch.Tensor, cut: torch.Tensor,
                          gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Discounted returns-to-go of the episodes that both start and end inside a rollout (DRWR).

    rewards: (T, N); ends, firsts, cut: (T, N) bool. Returns (returns (T, N), complete (T, N) bool):
    returns[t] = sum_{t' >= t} gamma ** (t' - t) r[t'] up to the end of t's episode, and
    `complete` marks the steps whose whole episode lies inside the rollout, the only ones
    whose return-to-go is known (the reference uses exactly these). An episode that ends in a cut
    step (a transition that never happened) is not complete.
    """
    n_steps = rewards.shape[0]
    returns = torch.zeros_like(rewards)
    ends_known = torch.zeros_like(ends)
    running = torch.zeros_like(rewards[0])
    end_seen = torch.zeros_like(ends[0])
    for t in reversed(range(n_steps)):
        end_seen = torch.where(ends[t], ~cut[t], end_seen)
        running = rewards[t] + gamma * (~ends[t]) * running
        returns[t] = running
        ends_known[t] = end_seen
    started = torch.zeros_like(firsts)
    start_seen = torch.zeros_like(firsts[0])
    for t in range(n_steps):
        start_seen = start_seen | firsts[t]
        started[t] = start_seen
        start_seen = start_seen & ~ends[t]  # the next episode starts fresh after an end, flagged by firsts
    return returns, started & ends_known
