"""Evaluation episodes in a vector env, shared by the eval agent and every fine-tuning agent."""

import math
from collections.abc import Callable

import torch

from agent.eval.episodes import EpisodeStats, EpisodeTracker


@torch.no_grad()
def run_episodes(venv, act: Callable[[dict], torch.Tensor], n_episodes: int, act_steps: int,
                 seed: int) -> list[EpisodeStats]:
    """Run each of the N envs for its first ceil(n_episodes / N) episodes and return them all.

    Counting a fixed number of episodes per env (rather than the first n_episodes to
    finish) keeps short episodes from being over-represented.
    act: obs {key: (N, To, ...)} -> action chunk (N, >= act_steps, Da); only the first act_steps run.
    """
    per_env = math.ceil(n_episodes / venv.num_envs)
    tracker = EpisodeTracker(venv.num_envs, act_steps)
    episodes = [[] for _ in range(venv.num_envs)]
    obs = venv.reset(seed=seed)
    while any(len(done) < per_env for done in episodes):
        step = venv.step(act(obs)[:, :act_steps])
        ends = step.terminated | step.truncated
        for env, stats in tracker.update(step.reward, step.n_executed, ends, step.cut, step.success):
            if len(episodes[env]) < per_env:
                episodes[env].append(stats)
        obs = step.obs
    return [stats for done in episodes for stats in done]
