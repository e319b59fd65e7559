"""Episode statistics of vectorized rollouts."""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EpisodeStats:
    """One finished episode: return, length in simulator steps, best per-chunk reward / act_steps, and whether
    the task was solved (None for tasks without a notion of success)."""

    episode_return: float
    length: int
    best_reward: float
    success: bool | None = None


class EpisodeTracker:
    """Accumulates per-env returns over chunk-steps and reports the episodes that finish.

    An episode that was cut (simulator failure, vector env restart) is not a finished episode:
    it is counted in `n_cut` and left out of the statistics.
    """

    def __init__(self, n_envs: int, act_steps: int):
        self.act_steps = act_steps
        self.n_cut = 0
        self.returns = np.zeros(n_envs)
        self.lengths = np.zeros(n_envs, dtype=np.int64)
        self.best = np.full(n_envs, -np.inf)
        self.succeeded = np.zeros(n_envs, dtype=bool)

    def update(self, rewards: torch.Tensor, n_executed: torch.Tensor, episode_ends: torch.Tensor,
               cut: torch.Tensor, success: torch.Tensor | None = None) -> list[tuple[int, EpisodeStats]]:
        """rewards (N,) raw chunk rewards, n_executed (N,) simulator steps, episode_ends (N,) bool,
        cut (N,) bool (ends that are not finished episodes), success (N,) bool or None when the task
        has no notion of success -> finished (env, stats); an episode succeeded when any of its chunks did."""
        rewards = rewards.cpu().numpy()
        ends = episode_ends.cpu().numpy()
        cut = cut.cpu().numpy() & ends
        self.returns += rewards
        self.lengths += n_executed.cpu().numpy()
        self.best = np.maximum(self.best, rewards / self.act_steps)
        if success is not None:
            self.succeeded |= success.cpu().numpy()
        finished = []
        for env in np.flatnonzero(ends):
            if cut[env]:
                self.n_cut += 1
            else:
                episode_success = None if success is None else bool(self.succeeded[env])
                finished.append((int(env), EpisodeStats(float(self.returns[env]), int(self.lengths[env]),
                                                        float(self.best[env]), episode_success)))
            self.returns[env], self.lengths[env], self.best[env], self.succeeded[env] = 0.0, 0, -np.inf, False
        return finished


def summarize(episodes: list[EpisodeStats]) -> dict:
    """Mean/std return, mean length, best reward and, for tasks with a notion of success, the success rate of
    finished episodes ({"n_episodes": 0} when none finished)."""
    if not episodes:
        return {"n_episodes": 0}
    returns = np.array([e.episode_return for e in episodes])
    metrics = {
        "episode_return": float(returns.mean()),
        "episode_return_std": float(returns.std()),
        "episode_length": float(np.mean([e.length for e in episodes])),
        "best_reward": float(np.mean([e.best_reward for e in episodes])),
        "n_episodes": len(episodes),
    }
    if all(e.success is not None for e in episodes):
        metrics["success_rate"] = float(np.mean([e.success for e in episodes]))
    return metrics
