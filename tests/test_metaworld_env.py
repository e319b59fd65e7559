"""The Meta-World task family: seeded placements, sparse success reward and termination, the scripted experts
on the installed mujoco, the demo maker, and a task file end to end (pre-training, 2 DPPO iterations,
evaluation)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_CRITIC, TINY_MODEL, run_config

from dppo.config import load_task_config
from env.families import check_env
from env.vector import make_task_vector_env

pytest.importorskip("metaworld")

from env.metaworld_env import MetaWorldEnv, expert_policy  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ["button_press", "drawer_open", "door_open", "pick_place", "peg_insert_side", "hammer"]


def expert_episode(env: MetaWorldEnv, seed: int) -> tuple[list[float], bool, bool, dict]:
    """Rewards, terminated and truncated flags at the end, and the last info of one expert episode."""
    expert = expert_policy(env.task)
    obs, _ = env.reset(seed=seed)
    rewards = []
    while True:
        obs, reward, terminated, truncated, info = env.step(expert.get_action(obs["state"].astype(np.float64)))
        rewards.append(reward)
        if terminated or truncated:
            return rewards, terminated, truncated, info


def test_a_seed_gives_one_sequence_of_placements_and_every_reset_a_new_one():
    first, second, other = (MetaWorldEnv("pick-place-v3", seed=s) for s in (3, 3, 4))
    goals = [[env.reset()[0]["state"][-3:] for _ in range(3)] for env in (first, second, other)]
    assert all(np.array_equal(a, b) for a, b in zip(goals[0], goals[1])), "same seed, same placements"
    assert not np.allclose(goals[0][0], goals[0][1]), "a new goal at every reset"
    assert not np.allclose(goals[0][0], goals[2][0]), "another seed, another goal"
    obs, _ = first.reset(seed=11)
    assert obs["state"].shape == (39,) and obs["state"].dtype == np.float32
    assert np.array_equal(obs["state"], MetaWorldEnv("pick-place-v3").reset(seed=11)[0]["state"])


@pytest.mark.parametrize("task", TASKS)
def test_the_expert_solves_each_task_file_with_one_sparse_reward_at_the_terminal_step(task):
    cfg = load_task_config(task)
    env = MetaWorldEnv(cfg.env.id, **cfg.env.kwargs)
    rewards, terminated, truncated, info = expert_episode(env, seed=0)
    assert terminated and not truncated and info["success"]
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0 and len(rewards) < cfg.max_episode_steps


def test_dense_reward_and_the_time_limit():
    env = MetaWorldEnv("pick-place-v3", reward="dense", max_episode_steps=20)
    env.reset(seed=0)
    rewards = []
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(np.zeros(4))
        rewards.append(reward)
    assert truncated and not terminated and not info["success"]
    assert 0.0 < min(rewards) and max(rewards) <= 10.0, "Meta-World's shaped reward, not the success flag"
    with pytest.raises(ValueError, match="set env.kwargs.reward to sparse or dense"):
        MetaWorldEnv("pick-place-v3", reward="shaped")


def test_unknown_task_is_one_line_naming_the_tasks():
    with pytest.raises(ValueError, match=r"^Unknown Meta-World task 'pick-place-v2': set env.id .* pick-place-v3"):
        check_env("metaworld", "pick-place-v2")


def test_vector_env_steps_chunks_and_reports_success():
    cfg = load_task_config("button_press")
    venv = make_task_vector_env(cfg.env, n_envs=2, cond_steps=1, act_steps=4, asynchronous=False, seed=0)
    try:
        obs = venv.reset(seed=0)
        assert obs["state"].shape == (2, 1, 39)
        step = venv.step(torch.zeros(2, 4, 4))
        assert step.obs["state"].dtype == torch.float32 and step.n_executed.tolist() == [4, 4]
        assert step.success.tolist() == [False, False] and step.reward.tolist() == [0.0, 0.0]
    finally:
        venv.close()


def test_demo_maker_keeps_successes_and_a_task_runs_pretraining_dppo_and_evaluation(tmp_path):
    data_dir = tmp_path / "data"
    result = subprocess.run([sys.executable, "script/dataset/make_metaworld_demos.py", "--task", "button_press",
                             "--n-demos", "2", "--noise", "0.3", "--out-dir", str(data_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = np.load(data_dir / "train.npz")
    metadata = json.loads((data_dir / "metadata.json").read_text())
    assert metadata["n_episodes"] == 2 and metadata["expert"]["n_success"] == 2
    assert data["states"].shape == (data["traj_lengths"].sum(), 39) and np.abs(data["actions"]).max() <= 1.0
    ends = np.cumsum(data["traj_lengths"]) - 1
    assert data["terminals"][ends].all() and data["terminals"].sum() == 2 and data["rewards"].sum() == 2.0

    overrides = ["wandb=null", "device=cpu", "task=button_press", f"dataset_dir={data_dir}", "max_episode_steps=16"]
    run_config("pre_diffusion_mlp", overrides + TINY_MODEL + ["denoising_steps=5",
        f"logdir={tmp_path / 'bc'}", "train.n_epochs=1", "train.batch_size=16",
        f"export_policy_path={data_dir}/pretrained/diffusion_mlp.pt"])
    run_config("ft_ppo_diffusion_mlp", overrides + TINY_CRITIC + ["denoising_steps=5",
        f"logdir={tmp_path / 'ft'}", "model.network.mlp_dims=[32,32,32]", "env.n_envs=2", "env.asynchronous=false",
        "train.n_steps=4", "train.n_train_itr=2", "train.batch_size=4", "train.update_epochs=1", "train.eval_interval=1",
        "ft_denoising_steps=2"])
    with open(tmp_path / "ft" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [row["eval/success_rate"] for row in rows if "eval/success_rate" in row] == [0.0, 0.0, 0.0]
    assert [row["train/env_steps"] for row in rows if "train/env_steps" in row] == [32, 64]
    results = run_config("eval_diffusion_mlp", overrides + [f"logdir={tmp_path / 'eval'}", "env.n_envs=2",
                                                            "env.asynchronous=false", "n_episodes=2"])
    assert results["n_episodes"] == 2 and results["success_rate"] == 0.0 and results["episode_length"] == 16

    report = subprocess.run([sys.executable, "script/dataset/make_metaworld_demos.py", "--task", "button_press",
                             "--evaluate-expert", "2", "--noise", "0", "--out-dir", str(tmp_path / "none")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert report.stdout.startswith("button-press-v3, noise 0.0: expert success 2/2, ")
    assert not (tmp_path / "none").exists()
    bad = subprocess.run([sys.executable, "script/dataset/make_metaworld_demos.py", "--task", "hopper"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error: task hopper is a gym task")
