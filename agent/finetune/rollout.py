"""What one fine-tuning iteration collects: n_steps action chunks in each of n_envs envs."""

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """(T, N, ...) tensors on the run's device, T = n_steps chunk-steps, N = n_envs.

    obs, next_obs: dicts {"state": (T, N, To, Do)[, "rgb": (T, N, To, C, H, W) uint8]}; next_obs is the
        observation after each step, which for an ended episode is its final observation (not the next
        episode's first)
    actions:        (T, N, Ta, Da) the whole chunks the policy produced; their first act_steps ran
    stored:         what the policy's `explore` kept beside each chunk, e.g. chains (T, N, K'+1, Ta, Da)
    rewards:        (T, N) raw rewards summed over the executed steps of each chunk
    scaled_rewards: (T, N) rewards after the iteration's reward scaling (running std, or a constant factor)
    terminated:     (T, N) bool, the episode reached a terminal state (no bootstrap)
    ends:           (T, N) bool, terminated or truncated (time limit, simulator failure)
    firsts:         (T, N) bool, step t is the first of an episode
    cut:            (T, N) bool, step t never happened as the task's transition (a worker restart or a simulator
                    failure ended the episode there): no sample, no return, no bootstrap target for learning
    """

    obs: dict
    next_obs: dict
    actions: torch.Tensor
    stored: dict
    rewards: torch.Tensor
    scaled_rewards: torch.Tensor
    terminated: torch.Tensor
    ends: torch.Tensor
    firsts: torch.Tensor
    cut: torch.Tensor

    @property
    def n_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def n_envs(self) -> int:
        return self.rewards.shape[1]


def stack_steps(steps: list) -> torch.Tensor | dict:
    """T per-step values (N, ...), tensors or dicts of tensors -> (T, N, ...), a tensor or a dict of them."""
    if isinstance(steps[0], dict):
        return {key: stack_steps([step[key] for step in steps]) for key in steps[0]}
    return torch.stack(steps)


def flatten_steps(x: torch.Tensor | dict) -> torch.Tensor | dict:
    """(T, N, ...) -> (T * N, ...), for a tensor or each tensor of a dict; sample i is step i // N of env i % N."""
    if isinstance(x, dict):
        return {key: flatten_steps(value) for key, value in x.items()}
    return x.reshape(-1, *x.shape[2:])


def index_samples(x: torch.Tensor | dict, idx: torch.Tensor) -> torch.Tensor | dict:
    """x[idx] for a tensor or each tensor of a dict (idx: an index tensor or a slice)."""
    if isinstance(x, dict):
        return {key: index_samples(value, idx) for key, value in x.items()}
    return x[idx]


@torch.no_grad()
def map_batches(fn, n_samples: int, batch_size: int, device) -> torch.Tensor:
    """torch.cat of fn(idx) over consecutive index batches of 0..n_samples-1 (bounded memory, no graph)."""
    return torch.cat([fn(idx) for idx in torch.arange(n_samples, device=device).split(batch_size)])
