"""Sweeps through script/run.py: Hydra's sweep syntax, the basic / joblib / submitit_local launchers, the sweep
summary, threads per job, the Slurm launcher's defaults, and wandb settings that never stop a run."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import compose_config
from hydra import compose, initialize_config_dir

from dppo.config import register_resolvers
from dppo.logging import MetricLogger
from dppo.runtime import available_cores, job_threads, parallel_jobs
from dppo.sweep import read_metrics, sweep_jobs, write_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_DIMS = {"hopper": (11, 3), "walker2d": (17, 6)}  # obs_dim, action_dim of cfg/task/<task>.yaml
TINY_PRETRAINING = ["train.n_epochs=2", "train.batch_size=16", "model.network.mlp_dims=[32,32,32]", "wandb=null",
                    "device=cpu"]


def write_task_datasets(data_dir):
    """Two random 30-step episodes per task in data_dir/<task>/train.npz, with the task's dimensions."""
    rng = np.random.default_rng(0)
    for task, (obs_dim, action_dim) in TASK_DIMS.items():
        os.makedirs(data_dir / task)
        np.savez(data_dir / task / "train.npz", states=rng.normal(size=(60, obs_dim)).astype(np.float32),
                 actions=rng.uniform(-1, 1, size=(60, action_dim)).astype(np.float32), traj_lengths=np.array([30, 30]))


def multirun(tmp_path, *overrides, succeed=True):
    """Run a tiny pre-training multirun under tmp_path; returns (completed process, sweep dir)."""
    if not (tmp_path / "data").exists():
        write_task_datasets(tmp_path / "data")
    env = dict(os.environ, DPPO_LOG_DIR=str(tmp_path / "log"))
    result = subprocess.run([sys.executable, "script/run.py", "--config-name=pre_diffusion_mlp", "--multirun",
                             f"dataset_dir={tmp_path / 'data'}/${{env_name}}", *TINY_PRETRAINING, *overrides],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert (result.returncode == 0) == succeed, result.stderr[-3000:]
    sweeps = os.listdir(tmp_path / "log" / "multirun")
    assert len(sweeps) == 1
    return result, os.path.join(tmp_path / "log" / "multirun", sweeps[0])


def summary_rows(sweep_dir):
    with open(os.path.join(sweep_dir, "summary.csv")) as f:
        return list(csv.DictReader(f))


def test_choice_of_tasks_gives_a_run_dir_per_job_and_a_summary(tmp_path):
    result, sweep_dir = multirun(tmp_path, "task=choice(hopper,walker2d)")
    rows = summary_rows(sweep_dir)
    assert [(row["task"], row["config"], row["seed"]) for row in rows] == [
        ("hopper", "pre_diffusion_mlp", "42"), ("walker2d", "pre_diffusion_mlp", "42")]
    assert len({row["run dir"] for row in rows}) == 2
    for row in rows:
        metrics = read_metrics(row["run dir"])
        assert [r["step"] for r in metrics] == [1, 2]
        assert float(row["final loss"]) == pytest.approx(metrics[-1]["train/loss"])
        assert float(row["wall time (min)"]) == pytest.approx(metrics[-1]["train/wall_time"] / 60)
        assert row["final eval return"] == "" and row["env steps"] == "", "pre-training logs neither"
    with open(os.path.join(sweep_dir, "summary.md")) as f:
        table = f.read().splitlines()
    assert table[0].startswith("| job | task | config | seed | initial eval return | final eval return |") and len(table) == 4
    assert f"Sweep summary: {sweep_dir}/summary.md" in result.stdout


def test_a_failed_job_leaves_the_others_running_and_summarize_tables_them(tmp_path):
    write_task_datasets(tmp_path / "data")
    os.remove(tmp_path / "data" / "walker2d" / "train.npz")
    result, sweep_dir = multirun(tmp_path, "task=walker2d,hopper", succeed=False)
    assert "JobFailed: FileNotFoundError: Dataset " in result.stderr
    assert not os.path.exists(os.path.join(sweep_dir, "summary.csv")), "Hydra skips the callback after a failure"
    subprocess.run([sys.executable, "script/summarize.py", sweep_dir], cwd=REPO, check=True, capture_output=True,
                   timeout=120)
    row, = summary_rows(sweep_dir)
    assert (row["job"], row["task"]) == ("1", "hopper")
    assert [r["step"] for r in read_metrics(row["run dir"])] == [1, 2], "the job after the failed one ran"


def test_joblib_runs_jobs_in_parallel_with_a_share_of_the_cores_each(tmp_path):
    _, sweep_dir = multirun(tmp_path, "task=glob(hop*)", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    jobs = sweep_jobs(sweep_dir)
    assert [job["threads"] for job in jobs] == [max(1, available_cores() // 2)] * 2
    assert [(row["task"], row["seed"]) for row in summary_rows(sweep_dir)] == [("hopper", "0"), ("hopper", "1")]


def test_submitit_local_runs_a_job_to_completion(tmp_path):
    _, sweep_dir = multirun(tmp_path, "seed=3", "hydra/launcher=submitit_local")
    row, = summary_rows(sweep_dir)
    assert (row["task"], row["seed"]) == ("hopper", "3")
    assert [r["step"] for r in read_metrics(row["run dir"])] == [1, 2]
    assert os.listdir(os.path.join(sweep_dir, ".submitit")), "the job went through submitit"


@pytest.mark.parametrize("task", ["task=hoppr", "task=choice(hopper,hoppr)"])
def test_unknown_task_gets_one_line_in_a_multirun_too(task):
    result = subprocess.run([sys.executable, "script/run.py", "--config-name=pre_diffusion_mlp", "--multirun", task],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Unknown task 'hoppr': use one of ")
    tasks = sorted(name[:-5] for name in os.listdir(os.path.join(REPO, "cfg", "task")) if name.endswith(".yaml"))
    assert lines[0].endswith(f"use one of {', '.join(tasks)} (configs in cfg/task/).")


def test_slurm_launcher_takes_its_resources_from_the_slurm_block():
    register_resolvers()
    with initialize_config_dir(config_dir=os.path.join(REPO, "cfg"), version_base=None):
        cfg = compose("ft_ppo_diffusion_mlp", ["hydra/launcher=slurm", "slurm.partition=gpu", "slurm.mem_gb=64"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.mem_gb, launcher.timeout_min, launcher.gpus_per_node,
            launcher.cpus_per_task) == ("gpu", 64, 1440, 1, 8), "overrides and the defaults of cfg/common.yaml"
    assert launcher.qos is None, "the plugin's other fields are kept"


def test_threads_per_job():
    cores = available_cores()
    assert parallel_jobs(None) == 1 and parallel_jobs(3) == 3
    assert parallel_jobs(-1) == cores and parallel_jobs(-2) == max(1, cores - 1)
    assert job_threads(None, 1) is None, "a lone job keeps torch's default"
    assert job_threads(None, 2) == max(1, cores // 2)
    assert job_threads(None, 4 * cores) == 1
    assert job_threads(5, 2) == 5
    with pytest.raises(ValueError, match="threads=0"):
        job_threads(0, 1)


def test_summary_of_finetuning_jobs_has_returns_success_and_env_steps(tmp_path):
    sweep_dir = tmp_path / "sweep"
    for num, (seed, returns, success) in enumerate([(0, [10.0, 40.0, 30.0], [0.0, 0.5, 1.0]), (1, [5.0, 6.0], None)]):
        run_dir = tmp_path / f"run{num}"
        os.makedirs(run_dir)
        rows = [{"step": step * 2, "eval/episode_return": value} for step, value in enumerate(returns)]
        rows += [{"step": 4, "train/env_steps": 8000.0, "train/wall_time": 90.0}]
        if success:
            rows += [{"step": step * 2, "eval/success_rate": value} for step, value in enumerate(success)]
        with open(run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        with open(run_dir / "config.yaml", "w") as f:
            f.write(f"name: can_ft\nenv_name: can\nseed: {seed}\n")
        os.makedirs(sweep_dir / str(num))
        with open(sweep_dir / str(num) / "job.json", "w") as f:
            json.dump({"num": num, "config_name": "ft_ppo_diffusion_mlp", "overrides": [f"seed={seed}"],
                       "run_dir": str(run_dir), "threads": None}, f)
    write_summary(str(sweep_dir))
    first, second = summary_rows(sweep_dir)
    assert (first["initial eval return"], first["final eval return"], first["best eval return"],
            first["final success rate"]) == ("10.0", "30.0", "40.0", "1.0")
    assert (first["env steps"], first["wall time (min)"]) == ("8000.0", "1.5")
    assert (second["final eval return"], second["best eval return"], second["final success rate"]) == ("6.0", "6.0", "")
    with open(sweep_dir / "summary.md") as f:
        assert f.read().splitlines()[2].startswith("| 0 | can | ft_ppo_diffusion_mlp | 0 | 10 | 30 | 40 | 1 |  | 8,000 | 1.5 |")


def test_wandb_groups_seeds_of_one_config_and_names_runs_by_seed():
    cfg = compose_config("ft_ppo_diffusion_mlp", ["task=walker2d", "seed=3"])
    assert cfg.wandb.group == cfg.name == "walker2d_ft_ppo_diffusion_mlp_ta4_td20_tdf10"
    assert cfg.wandb.name == f"{cfg.name}_seed3"
    assert cfg.wandb.mode == "offline"


def test_a_run_without_wandb_installed_logs_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    logger = MetricLogger(str(tmp_path), wandb_cfg={"project": "dppo-gym", "mode": "offline"})
    logger.log({"loss": 1.5}, step=1)
    logger.close()
    assert logger.run is None
    assert "Warning: wandb is off for this run (ModuleNotFoundError" in capsys.readouterr().out
    assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 1.5}]


def test_online_wandb_without_login_warns_and_logs_locally(tmp_path, monkeypatch, capsys):
    for variable in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no stored key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # no terminal to prompt on, as in a batch job
    logger = MetricLogger(str(tmp_path / "run"), wandb_cfg={"project": "dppo-gym", "mode": "online"})
    logger.log({"loss": 0.5}, step=1)
    logger.close()
    assert logger.run is None
    assert "Warning: wandb is off for this run" in capsys.readouterr().out
    assert read_metrics(str(tmp_path / "run")) == [{"step": 1, "loss": 0.5}]
