"""Fine-tuning under torchrun (2 CPU processes, gloo): the same collected steps split over 2 ranks give the
weights one process gets from all of them; a 2-process run checkpoints and resumes; a dead rank ends the job;
SIGTERM checkpoints the iteration and the same command continues."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import TINY_CRITIC, TINY_MODEL, run_config, write_hopper_dataset

from dppo.checkpoint import load_checkpoint
from dppo.distributed import first_slurm_host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(REPO, "tests", "finetune_update_harness.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# PYTHONFAULTHANDLER: a rank that aborts (SIGABRT) prints every thread's Python stack, so a failure says where
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
# float32: under bf16 the shards' gradients would be rounded over other row sums than the whole minibatch's.
EXACT = dict(rtol=1e-5, atol=1e-6)
N_ENVS = 4  # one process's envs; each of the 2 ranks steps 2


@pytest.fixture(scope="module")
def tiny_policies(tmp_path_factory):
    """A tiny dataset with a diffusion and a Gaussian policy cloned on it for one epoch: the dataset dir."""
    root = tmp_path_factory.mktemp("policies")
    dataset_dir = root / "data"
    write_hopper_dataset(dataset_dir)
    for kind, extra in (("diffusion", ["denoising_steps=5"]), ("gaussian", [])):
        run_config(f"pre_{kind}_mlp", TINY_MODEL + extra + [
            f"dataset_dir={dataset_dir}", f"logdir={root / kind}", "train.n_epochs=1", "train.batch_size=16",
            f"export_policy_path={dataset_dir}/pretrained/{kind}_mlp.pt"])
    return dataset_dir


def update_overrides(dataset_dir, logdir, n_envs, extra=()) -> list[str]:
    return TINY_MODEL + TINY_CRITIC + [
        f"dataset_dir={dataset_dir}", f"logdir={logdir}", f"env.n_envs={n_envs}", "env.asynchronous=false",
        "train.n_steps=8", "train.eval_interval=null", "precision=fp32", *extra]


def update_both_ways(config_name, dataset_dir, tmp_path, extra, launch="torchrun"):
    """Collect one iteration on one process of N_ENVS envs, then learn from it on one process and on 2 ranks of
    N_ENVS / 2 envs each (started by torchrun, or as the 2 tasks of a Slurm job step); returns the two outputs of
    the harness (weights, reward scaler, metrics)."""
    steps = tmp_path / "steps.pt"
    subprocess.run([sys.executable, HARNESS, "collect", str(steps), config_name,
                    *update_overrides(dataset_dir, tmp_path / "collect", N_ENVS, extra)],
                   cwd=REPO, env=ENV, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, HARNESS, "update", str(steps), str(tmp_path / "one.pt"), config_name,
                    *update_overrides(dataset_dir, tmp_path / "one", N_ENVS, extra)],
                   cwd=REPO, env=ENV, check=True, capture_output=True, timeout=300)
    two = [HARNESS, "update", str(steps), str(tmp_path / "two.pt"), config_name,
           *update_overrides(dataset_dir, tmp_path / "two", N_ENVS // 2, extra)]
    if launch == "torchrun":
        result = subprocess.run([*TORCHRUN, *two], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:  # what srun gives each task of a 2-task step on one node
        slurm = dict(ENV, SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=str(os.getpid()))
        tasks = [subprocess.Popen([sys.executable, *two], cwd=REPO, env=dict(slurm, SLURM_PROCID=str(r),
                                                                            SLURM_LOCALID=str(r)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        for task in tasks:
            _, stderr = task.communicate(timeout=300)
            assert task.returncode == 0, stderr[-3000:]
    return torch.load(tmp_path / "one.pt", weights_only=False), torch.load(tmp_path / "two.pt", weights_only=False)


def assert_same_modules(one: dict, two: dict) -> None:
    assert one.keys() == two.keys()
    for name in one:
        for key, value in one[name].items():
            torch.testing.assert_close(two[name][key], value, **EXACT, msg=f"{name}.{key}")


def test_a_dppo_update_split_over_two_ranks_equals_one_process_on_all_samples(tiny_policies, tmp_path):
    # 8 steps x 4 envs = 32 samples, minibatches of 8 (4 per rank) x 2 epochs; running reward scaling on
    extra = ["train.batch_size=8", "train.update_epochs=2", "denoising_steps=5", "ft_denoising_steps=2",
             "train.reward_scale_running=true"]
    one, two = update_both_ways("ft_ppo_diffusion_mlp", tiny_policies, tmp_path, extra)
    assert_same_modules(one["modules"], two["modules"])
    assert one["reward_scaler"]["ret"].shape == (N_ENVS,)
    torch.testing.assert_close(two["reward_scaler"]["ret"], one["reward_scaler"]["ret"], **EXACT)
    # the running statistics are float64 tensors and a float count: compared entry by entry, not as one dict
    rms_one, rms_two = one["reward_scaler"]["rms"], two["reward_scaler"]["rms"]
    assert rms_one.keys() == rms_two.keys() == {"mean", "var", "count"}
    torch.testing.assert_close(rms_two["mean"], rms_one["mean"], rtol=1e-9, atol=0)
    torch.testing.assert_close(rms_two["var"], rms_one["var"], rtol=1e-9, atol=0)
    assert rms_two["count"] == rms_one["count"]
    assert one["metrics"]["minibatch_updates"] == two["metrics"]["minibatch_updates"] == 8
    for key in ("loss", "pg_loss", "value_loss", "approx_kl", "clipfrac"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-4, abs=1e-7), key
    assert one["metrics"]["approx_kl"] > 0, "the actor moved"


def test_an_awr_update_split_over_two_ranks_equals_one_process_on_all_samples(tiny_policies, tmp_path):
    # Gaussian DAWR: losses without sampling noise, so the shared minibatch draws make the runs equal
    extra = ["policy=gaussian", "train.batch_size=8", "train.replay_ratio=4", "train.buffer_size=16"]
    one, two = update_both_ways("ft_awr_diffusion_mlp", tiny_policies, tmp_path, extra)
    assert_same_modules(one["modules"], two["modules"])
    assert one["metrics"]["gradient_steps"] == two["metrics"]["gradient_steps"] == 16
    for key in ("critic_loss", "actor_loss"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-4), key


def test_a_dsrl_update_over_two_ranks_learns_as_one_process(tiny_policies, tmp_path):
    """DSRL-NA from the same collected steps on 1 and 2 processes: the same gradient steps and metrics, the
    temperature where one process puts it. Each rank draws its own actor and distillation noise for its share of the
    batch, so the two runs differ by sampling, not by design: the temperature after 8 steps of lr 3e-4 lies within
    8 * 3e-4 of 1 either way (its metric, averaged over the ranks, once mixed the ranks' metrics in two orders)."""
    extra = ["train.batch_size=8", "train.buffer_size=16", "train.init_rollout_steps=0", "train.utd=2",
             "train.noise_critic_grad_steps=2", "noise_actor.mlp_dims=[32,32,32]", "denoising_steps=5"]
    one, two = update_both_ways("ft_dsrl_diffusion_mlp", tiny_policies, tmp_path, extra)
    assert one["metrics"].keys() == two["metrics"].keys()
    assert one["metrics"]["gradient_steps"] == two["metrics"]["gradient_steps"] == 8  # 8 steps / 2 x 2
    for run in (one, two):
        assert abs(run["metrics"]["temperature"] - 1) < 8 * 3e-4
        assert abs(run["modules"]["temperature"]["log_alpha"]) < 8 * 3e-4


def test_the_tasks_of_a_slurm_job_step_are_the_ranks(tiny_policies, tmp_path):
    assert first_slurm_host("gpu[03-05,7],cpu1") == "gpu03" and first_slurm_host("node1,node2") == "node1"
    assert first_slurm_host("localhost") == "localhost"
    extra = ["train.batch_size=8", "train.update_epochs=1", "denoising_steps=5", "ft_denoising_steps=2"]
    one, two = update_both_ways("ft_ppo_diffusion_mlp", tiny_policies, tmp_path, extra, launch="slurm")
    assert_same_modules(one["modules"], two["modules"])


def run_overrides(dataset_dir, logdir, n_train_itr) -> list[str]:
    return update_overrides(dataset_dir, logdir, 2, [
        f"train.n_train_itr={n_train_itr}", "train.batch_size=8", "train.update_epochs=1", "train.eval_interval=2",
        "denoising_steps=5", "ft_denoising_steps=2", "resume=auto", "train.save_model_freq=1"])


def metric_steps(run_dir, key="train/loss") -> list[int]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [row["step"] for row in map(json.loads, f) if key in row]


def test_two_process_finetuning_runs_checkpoints_and_resumes(tiny_policies, tmp_path):
    run_dir = tmp_path / "run"
    command = [*TORCHRUN, "script/run.py", "--config-name=ft_ppo_diffusion_mlp"]
    first = subprocess.run([*command, *run_overrides(tiny_policies, run_dir, 2)], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("PPOAgent on hopper with 2 envs x 2 processes") == 1, "rank 0 alone prints"
    assert metric_steps(run_dir) == [1, 2] and metric_steps(run_dir, "eval/episode_return") == [0, 2]
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    steps = [row["train/iteration_env_steps"] for row in rows if "train/loss" in row]
    assert all(64 < n <= 128 for n in steps), f"both ranks' env steps (2 x 2 envs x 8 chunks of <= 4): {steps}"
    state = load_checkpoint(str(run_dir / "checkpoint" / "last.pt"))
    assert state["world_size"] == 2 and len(state["rank_rngs"]) == 2 and state["itr"] == 2
    assert state["reward_scaler"]["ret"].shape == (4,)

    second = subprocess.run([*command, *run_overrides(tiny_policies, run_dir, 3)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from" in second.stdout and metric_steps(run_dir) == [1, 2, 3]

    single = subprocess.run([sys.executable, "script/run.py", "--config-name=ft_ppo_diffusion_mlp",
                             *run_overrides(tiny_policies, run_dir, 4)], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode != 0
    assert single.stderr.strip().splitlines()[-1].endswith(
        "was written by 2 process(es) and this run has 1: resume it with as many (torchrun --nproc_per_node=2 ...), "
        "or start anew.")


def test_a_rank_that_dies_ends_the_job(tiny_policies, tmp_path):
    overrides = run_overrides(tiny_policies, tmp_path / "run", 1000)
    job = subprocess.Popen([*TORCHRUN, "script/run.py", "--config-name=ft_ppo_diffusion_mlp", *overrides], cwd=REPO,
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not metric_steps_or_none(tmp_path / "run") and time.time() < deadline:
            time.sleep(0.5)
        rank_1 = worker_pids(job.pid)[-1]
        os.kill(rank_1, signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)  # no hang: the surviving rank is stopped too
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert "script/run.py FAILED" in stderr and "Signal 9 (SIGKILL)" in stderr, "torchrun names the dead rank"
    survivor = [line for line in stderr.splitlines() if line.startswith("Rank 0 stopped: another process")]
    assert len(survivor) == 1, stderr[-3000:]
    assert "/agent/finetune/" not in stderr, "the surviving rank says one line, no traceback"


def metric_steps_or_none(run_dir):
    try:
        return metric_steps(run_dir)
    except FileNotFoundError:
        return None


def worker_pids(parent: int) -> list[int]:
    """The worker processes torchrun (pid `parent`) started, by pid (rank order)."""
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return sorted(int(pid) for pid in children)


@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_sigterm_checkpoints_the_iteration_and_the_same_command_continues(tiny_policies, tmp_path, launcher):
    run_dir = tmp_path / "run"
    start = [sys.executable] if launcher == "python" else TORCHRUN
    command = [*start, "script/run.py", "--config-name=ft_ppo_diffusion_mlp", *run_overrides(tiny_policies, run_dir, 6)]
    job = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not metric_steps_or_none(run_dir) and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    stdout, stderr = job.communicate(timeout=120)
    if launcher == "python":
        assert job.returncode == 0, stderr[-2000:]
    stopped_at = load_checkpoint(str(run_dir / "checkpoint" / "last.pt"))["itr"]
    assert 1 <= stopped_at < 6
    assert f"Stopped by SIGTERM after iteration {stopped_at}:" in stdout
    assert metric_steps(run_dir) == list(range(1, stopped_at + 1))

    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6], "each step logged once"


def test_a_run_outside_the_main_thread_runs_without_stop_signals(tiny_policies, tmp_path):
    """Some launchers run jobs in threads, where Python installs no signal handlers."""
    errors = []

    def job():
        try:
            run_config("ft_ppo_diffusion_mlp", update_overrides(tiny_policies, tmp_path / "run", 2, [
                "train.n_train_itr=1", "train.batch_size=4", "train.update_epochs=1", "denoising_steps=5",
                "ft_denoising_steps=2"]))
        except Exception as error:  # reported to the test's thread
            errors.append(error)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(timeout=120)
    assert not errors and metric_steps(tmp_path / "run") == [1]
