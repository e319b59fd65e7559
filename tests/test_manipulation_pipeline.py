"""Manipulation end to end through the same agents as Gym: robosuite tasks in the vector env, pre-training,
DPPO fine-tuning and evaluation from states and from pixels (tiny networks, short episodes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_CRITIC, TINY_MODEL, run_config

from dppo.config import load_task_config
from env.vector import make_task_vector_env

pytest.importorskip("robosuite")

SHORT_EPISODE = 12  # simulator steps per episode in these tests (robomimic's horizons are 300-800)


def write_manipulation_dataset(directory, obs_dim: int, action_dim: int, image_shape=None, n_episodes=3,
                               length=20, seed=0) -> str:
    """A dataset of smooth random episodes in the project's format (states, actions and, with `image_shape`
    (C, H, W), uint8 images): directory/train.npz."""
    rng = np.random.default_rng(seed)
    steps = n_episodes * length
    t = np.arange(steps)[:, None]
    data = {
        "states": np.sin(0.1 * t + rng.normal(size=(1, obs_dim))).astype(np.float32),
        "actions": np.tanh(rng.normal(size=(steps, action_dim))).astype(np.float32),
        "traj_lengths": np.full(n_episodes, length, dtype=np.int64),
    }
    if image_shape is not None:
        data["images"] = rng.integers(0, 256, size=(steps, *image_shape), dtype=np.uint8)
    os.makedirs(directory, exist_ok=True)
    np.savez(os.path.join(directory, "train.npz"), **data)
    return os.path.join(directory, "train.npz")


@pytest.mark.parametrize("task", ["lift", "can", "square", "transport"])
def test_each_task_resets_and_steps_through_the_vector_env(task):
    cfg = load_task_config(task)
    venv = make_task_vector_env(cfg.env, n_envs=1, cond_steps=2, act_steps=3, asynchronous=False, seed=0)
    try:
        obs = venv.reset(seed=0)
        assert list(obs) == ["state"] and obs["state"].shape == (1, 2, cfg.obs_dim)
        step = venv.step(torch.zeros(1, 3, cfg.action_dim))
        assert step.obs["state"].shape == (1, 2, cfg.obs_dim) and step.obs["state"].dtype == torch.float32
        assert step.n_executed.tolist() == [3] and step.success.tolist() == [False]
        assert not torch.equal(step.obs["state"][0, 0], step.obs["state"][0, 1])  # gravity moved something
    finally:
        venv.close()


def manipulation_overrides(task, dataset_dir, logdir) -> list[str]:
    return ["wandb=null", "device=cpu", f"task={task}", f"dataset_dir={dataset_dir}", f"logdir={logdir}",
            f"max_episode_steps={SHORT_EPISODE}"]


def finetune_manipulation(config_name, task, dataset_dir, logdir, extra=()):
    run_config(config_name, manipulation_overrides(task, dataset_dir, logdir) + TINY_CRITIC + [
        "env.n_envs=2", "env.asynchronous=false", "train.n_steps=4", "train.n_train_itr=1", "train.batch_size=4",
        "train.update_epochs=1", "train.eval_interval=1", "train.n_critic_warmup_itr=0", "denoising_steps=5",
        "ft_denoising_steps=2", *extra,
    ])
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_lift_from_states_pretrain_finetune_and_evaluate(tmp_path):
    cfg = load_task_config("lift")
    dataset_dir = tmp_path / "data"
    write_manipulation_dataset(dataset_dir, cfg.obs_dim, cfg.action_dim)
    run_config("pre_diffusion_mlp", manipulation_overrides("lift", dataset_dir, tmp_path / "bc") + TINY_MODEL + [
        "train.n_epochs=1", "train.batch_size=16", "denoising_steps=5",
        f"export_policy_path={dataset_dir}/pretrained/diffusion_mlp.pt",
    ])
    rows = finetune_manipulation("ft_ppo_diffusion_mlp", "lift", dataset_dir, tmp_path / "ft",
                                 ["model.network.mlp_dims=[32,32,32]"])
    train = [row for row in rows if "train/pg_loss" in row]
    evals = [row for row in rows if "eval/success_rate" in row]
    assert len(train) == 1 and train[0]["train/env_steps"] == 2 * 4 * 4  # 2 envs x 4 chunks x act_steps 4
    assert [row["step"] for row in evals] == [0, 1]
    assert all(row["eval/success_rate"] == 0.0 for row in evals)  # a random policy does not lift the cube
    assert all(row["eval/episode_length"] == SHORT_EPISODE for row in evals)

    results = run_config("eval_diffusion_mlp", manipulation_overrides("lift", dataset_dir, tmp_path / "eval") + [
        "env.n_envs=2", "env.asynchronous=false", "n_episodes=2"])
    assert results["n_episodes"] == 2 and results["success_rate"] == 0.0


def test_lift_from_pixels_pretrain_and_finetune_with_vit(tmp_path):
    cfg = load_task_config("lift_img")
    dataset_dir = tmp_path / "data"
    write_manipulation_dataset(dataset_dir, cfg.obs_dim, cfg.action_dim, image_shape=(3 * cfg.num_views, 96, 96))
    tiny_vit = ["model.network.mlp_dims=[32,32,32]", "model.network.obs_encoder.embed_dim=32",
                "model.network.obs_encoder.spatial_emb=16"]
    run_config("pre_diffusion_mlp_img", manipulation_overrides("lift_img", dataset_dir, tmp_path / "bc") + tiny_vit + [
        "train.n_epochs=1", "train.batch_size=16", "denoising_steps=5", "train_dataset.max_n_episodes=1",
        f"export_policy_path={dataset_dir}/pretrained/diffusion_mlp_img.pt",
    ])
    rows = finetune_manipulation("ft_ppo_diffusion_mlp_img", "lift_img", dataset_dir, tmp_path / "ft", tiny_vit + [
        "env.kwargs.cpu_render=true", "critic.obs_encoder.embed_dim=32", "critic.obs_encoder.spatial_emb=16",
        "train.n_eval_episodes=2"])
    train = [row for row in rows if "train/pg_loss" in row]
    assert len(train) == 1 and np.isfinite(train[0]["train/pg_loss"]) and train[0]["train/env_steps"] == 32
    assert [row["step"] for row in rows if "eval/success_rate" in row] == [0, 1]


PIXEL_ASYNC_SCRIPT = """
import torch
from env.vector import make_vector_env
if __name__ == "__main__":
    venv = make_vector_env("robosuite", "Lift", 2, 1, 2, asynchronous=True, seed=0, env_kwargs={
        "obs_keys": ["robot0_eef_pos"], "image_keys": ["agentview_image"], "image_size": 32, "cpu_render": True})
    venv.reset(seed=0)
    step = venv.step(torch.zeros(2, 2, 7))
    print(tuple(step.obs["rgb"].shape), step.obs["rgb"].dtype)
    venv.close()
"""


def test_pixel_envs_run_in_worker_processes(tmp_path):
    """Rendering envs in async workers: with fork, the workers' EGL contexts hung while the vector env was built."""
    script = tmp_path / "pixel_async.py"
    script.write_text(PIXEL_ASYNC_SCRIPT)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "(2, 1, 3, 32, 32) torch.uint8"
