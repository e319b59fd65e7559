"""Load test of the vector env: many async workers, a worker killed and a NaN observation mid-run.

Every env runs episodes of exactly 10 steps (reward 1 each) in chunks of 5 actions, and the 51st
step of every env instance returns a NaN observation, which the guard turns into a truncation
(a cut episode, a simulator error). Before chunk-step K one worker is killed: that step rebuilds
the vector env and cuts every env's episode; the new instances count steps from 0 again. Each
episode that finishes has return 10 and must be counted exactly once; cut episodes are counted
as cut. The CI case is small; the 64-env case runs with `-m slow` (see docs/RELIABILITY.md).
"""

import os
import signal

import numpy as np
import pytest
import torch
from toy import COUNTING_NAN_ID, EPISODE_LENGTH

from agent.eval.episodes import EpisodeTracker
from env.vector import make_vector_env

ACT_STEPS = 5


def run_load(n_envs: int, n_chunk_steps: int, kill_at: int) -> dict:
    venv = make_vector_env("gym", COUNTING_NAN_ID, n_envs=n_envs, cond_steps=1, act_steps=ACT_STEPS,
                           asynchronous=True, seed=0)
    tracker = EpisodeTracker(n_envs, ACT_STEPS)
    finished_ids, finished = [], []
    sim_errors = 0
    try:
        venv.reset(seed=0)
        actions = torch.zeros(n_envs, ACT_STEPS, 1)
        for step in range(n_chunk_steps):
            if step == kill_at:
                os.kill(venv._envs[0].processes[n_envs // 2].pid, signal.SIGKILL)
            result = venv.step(actions)
            ends = result.terminated | result.truncated
            for env, stats in tracker.update(result.reward, result.n_executed, ends, result.cut):
                finished.append(stats)
                instance, episode, _ = result.final_obs["state"][env, -1].tolist()
                finished_ids.append((instance, episode))
            sim_errors += int(result.sim_errors.sum())
        restarts = venv.n_worker_restarts
    finally:
        venv.close()
    return {"finished": finished, "ids": finished_ids, "cut": tracker.n_cut, "sim_errors": sim_errors,
            "restarts": restarts}


NAN_STEP = 51
CHUNKS_BEFORE_NAN = (NAN_STEP - 1) // ACT_STEPS  # 10 chunks: 5 whole episodes, then the NaN chunk


def finished_in_instance(n_chunks: int) -> int:
    """Episodes one env instance finishes in n_chunks chunk-steps (2 chunks each; the NaN chunk cuts one)."""
    chunks_per_episode = EPISODE_LENGTH // ACT_STEPS
    if n_chunks <= CHUNKS_BEFORE_NAN:
        return n_chunks // chunks_per_episode
    return CHUNKS_BEFORE_NAN // chunks_per_episode + (n_chunks - CHUNKS_BEFORE_NAN - 1) // chunks_per_episode


@pytest.mark.parametrize("n_envs, n_chunk_steps, kill_at", [
    (8, 40, 8),
    (8, 120, 30),
    pytest.param(64, 3000, 1000, marks=pytest.mark.slow),
])
def test_killed_worker_and_nan_observation_count_every_episode_once(n_envs, n_chunk_steps, kill_at):
    out = run_load(n_envs, n_chunk_steps, kill_at)
    instances = (kill_at, n_chunk_steps - kill_at - 1)  # chunk-steps of the first and the rebuilt instances
    nan_events = sum(n > CHUNKS_BEFORE_NAN for n in instances)
    assert out["restarts"] == 1
    assert out["sim_errors"] == n_envs * nan_events
    assert out["cut"] == n_envs * (1 + nan_events), "the restart cuts every env's episode, and so does each NaN"
    assert len(out["finished"]) == n_envs * sum(finished_in_instance(n) for n in instances)
    assert len(set(out["ids"])) == len(out["ids"]), "no episode is counted twice"
    assert {(e.episode_return, e.length) for e in out["finished"]} == {(float(EPISODE_LENGTH), EPISODE_LENGTH)}
    assert np.isfinite([e.episode_return for e in out["finished"]]).all()
