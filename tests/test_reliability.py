"""Fault injection: killed runs resume cleanly, NaN stops a run without touching the last good checkpoint,
resumed runs log each step once, and evaluation's cut episodes restart the reward scaler's returns."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import hydra
import pytest
import torch
from conftest import compose_config, finetune_overrides, run_config
from toy import pretrain_toy_policy, toy_overrides

import agent.finetune.ppo as ppo_module
from dppo.checkpoint import last_checkpoint_path, load_checkpoint
from dppo.divergence import NonFiniteError
from dppo.logging import MetricLogger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITR = 6
RUN_TIMEOUT_S = 300
POLL_S = 0.05

# Runs script/run.py with torch.save replaced by one that writes a few bytes of the SAVE_NUMBER-th
# checkpoint and then kills its own process with SIGKILL: a crash in the middle of a checkpoint write.
DIE_DURING_SAVE = """
import os, runpy, signal, sys, torch
real_save, calls = torch.save, [0]
def dying_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["SAVE_NUMBER"]):
        f.write(b"PK\\x03\\x04 partial checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script_args(dataset_dir, run_dir, extra=()):
    overrides = finetune_overrides(dataset_dir, run_dir, n_train_itr=N_ITR)
    overrides = [o for o in overrides if not o.startswith("train.reset_at_iteration")]  # episodes span iterations
    return ["script/run.py", "--config-name=ft_ppo_diffusion_mlp", *overrides, *extra]


def rows_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_complete_without_duplicates(run_dir):
    assert load_checkpoint(last_checkpoint_path(str(run_dir)))["itr"] == N_ITR
    rows = rows_of(run_dir)
    train_steps = [row["step"] for row in rows if "train/env_steps" in row]
    eval_steps = [row["step"] for row in rows if "eval/episode_return" in row]
    assert train_steps == list(range(1, N_ITR + 1))
    assert eval_steps == list(range(0, N_ITR + 1, 2))
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + len(rows)


def train_rows(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return sum("train/env_steps" in line for line in f)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_between_iterations_then_resume(pretrained, tmp_path, seed):
    """Killed at a random moment after 1 to 4 finished iterations; the resumed run ends at N_ITR, each step once."""
    dataset_dir, _ = pretrained
    rng = random.Random(seed)
    kill_after = rng.randint(1, 4)
    process = subprocess.Popen([sys.executable, *run_script_args(dataset_dir, tmp_path)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + RUN_TIMEOUT_S
    while train_rows(tmp_path) < kill_after and process.poll() is None and time.time() < deadline:
        time.sleep(POLL_S)
    time.sleep(rng.uniform(0.0, 0.5))
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run([sys.executable, *run_script_args(dataset_dir, tmp_path, [f"resume={tmp_path}"])], cwd=REPO,
                   check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    assert_complete_without_duplicates(tmp_path)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    # with save_model_freq=100 each iteration writes only last.pt: the 3rd save is iteration 3's
    died = subprocess.run([sys.executable, "-c", DIE_DURING_SAVE, *run_script_args(dataset_dir, tmp_path)],
                          cwd=REPO, env={**os.environ, "SAVE_NUMBER": "3"}, capture_output=True, timeout=RUN_TIMEOUT_S)
    assert died.returncode == -signal.SIGKILL
    assert load_checkpoint(last_checkpoint_path(str(tmp_path)))["itr"] == 2, "the interrupted write left last.pt whole"
    subprocess.run([sys.executable, *run_script_args(dataset_dir, tmp_path, [f"resume={tmp_path}"])], cwd=REPO,
                   check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    assert_complete_without_duplicates(tmp_path)


def test_nan_loss_stops_the_run_and_leaves_last_checkpoint_byte_identical(monkeypatch, tmp_path):
    policy = pretrain_toy_policy(tmp_path, "diffusion", steps=50)
    overrides = toy_overrides(policy, tmp_path / "run") + [
        "env.n_envs=4", "train.n_steps=8", "train.batch_size=16", "denoising_steps=5", "ft_denoising_steps=5",
        "critic.mlp_dims=[16,16,16]", "train.eval_interval=null"]
    run_config("ft_ppo_diffusion_mlp", overrides + ["train.n_train_itr=1"])
    last = last_checkpoint_path(str(tmp_path / "run"))
    with open(last, "rb") as f:
        good = f.read()

    cfg = compose_config("ft_ppo_diffusion_mlp", overrides + ["train.n_train_itr=3", f"resume={tmp_path / 'run'}"])
    agent = hydra.utils.get_class(cfg._target_)(cfg)
    clean_loss = ppo_module.ppo_loss

    def poisoned_loss(*args, **kwargs):
        out = clean_loss(*args, **kwargs)
        out.pg_loss = out.pg_loss * float("nan")
        return out

    monkeypatch.setattr(ppo_module, "ppo_loss", poisoned_loss)
    with pytest.raises(NonFiniteError) as info:
        agent.run()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Iteration 2: non-finite ")
    assert "checkpoint/last.pt (iteration 1) is untouched" in message
    with open(last, "rb") as f:
        assert f.read() == good


def test_resumed_logger_drops_rows_logged_after_the_checkpoint(tmp_path):
    logger = MetricLogger(str(tmp_path))
    for step in range(1, 6):
        logger.log({"loss": float(step)}, step=step, prefix="train")
    logger.close()
    resumed = MetricLogger(str(tmp_path), resume=True, resume_step=3)
    resumed.log({"loss": 40.0}, step=4, prefix="train")
    assert [row["step"] for row in rows_of(tmp_path)] == [1, 2, 3, 4]
    assert rows_of(tmp_path)[-1]["train/loss"] == 40.0
    with open(tmp_path / "metrics.csv") as f:
        assert [line.split(",")[0] for line in f.read().strip().splitlines()[1:]] == ["1", "2", "3", "4"]


def test_fresh_episodes_restart_the_reward_scalers_running_returns(pretrained, tmp_path):
    """After evaluation (or any reset) every env starts an episode: cut episodes' returns must not carry over."""
    dataset_dir, _ = pretrained
    overrides = finetune_overrides(dataset_dir, tmp_path, n_train_itr=1) + ["train.n_steps=1", "train.batch_size=2"]
    cfg = compose_config("ft_ppo_diffusion_mlp", overrides)
    agent = hydra.utils.get_class(cfg._target_)(cfg)
    obs = agent.reset_envs()
    rollout, obs, _ = agent.collect_rollout(obs)
    agent.reward_scaler.ret[:] = 1e6  # the running returns of episodes that evaluation is about to cut
    obs = agent.reset_envs()
    rollout, _, _ = agent.collect_rollout(obs)
    assert rollout.firsts[0].all()
    torch.testing.assert_close(torch.as_tensor(agent.reward_scaler.ret, dtype=torch.float32), rollout.rewards[0])
