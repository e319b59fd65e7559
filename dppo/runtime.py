"""Start-up of every run: seeding, device choice, threads, run directory."""

import contextlib
import importlib.metadata
import json
import os
import platform
import random
import subprocess

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dppo.allocator import loaded_allocator


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(*keys: int) -> int:
    """A seed mixed from several integers (e.g. run seed and epoch), so that nearby keys give unrelated streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


ENV_SEED_STREAMS = {"build": 0, "train": 1, "eval": 2}  # the envs' uses, each with its own seeds


def env_seed(run_seed: int, stream: str, itr: int = 0) -> int:
    """The seed of the run's env 0 for one use of its envs (`stream`: "build", "train" resets, "eval" resets) at
    iteration `itr`; env i (over every rank) gets this + i.

    Hashed from all three, so that runs of different seeds start unrelated episodes: with `run_seed + i`, a
    sweep's seed-1 run replayed the episodes of seed 0's env i + 1 in its env i at every iteration, and the seeds'
    spread understated the noise. Two uses' ranges of N envs overlap with chance about 2N / 2**31. Below
    2**31 - 2**16, so that + i stays a 32-bit seed for every simulator.
    """
    return derived_seed(run_seed, ENV_SEED_STREAMS[stream], itr) % (2**31 - 2**16)


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask (a Slurm or cgroup allocation), not the whole node."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs(n_jobs: int | None) -> int:
    """How many jobs share this machine under a launcher with `n_jobs` (joblib's meaning: -1 all cores,
    -2 all but one, ...); 1 when the launcher has no n_jobs (basic, submitit: one job per allocation)."""
    if n_jobs is None:
        return 1
    return max(1, n_jobs if n_jobs > 0 else available_cores() + 1 + n_jobs)


def job_threads(threads: int | None, n_parallel_jobs: int) -> int | None:
    """Threads a job's torch should use: `threads` when set; else an equal share of the cores when several
    jobs run at once; else None (torch's own default, which follows OMP_NUM_THREADS)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads}: use a positive count, or threads=null for the default.")
        return threads
    if n_parallel_jobs > 1:
        return max(1, available_cores() // n_parallel_jobs)
    return None


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` torch threads (None: unchanged), then restore the previous count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def set_threads(threads: int) -> None:
    """Use `threads` threads in torch here and in the processes this one starts (env workers)."""
    torch.set_num_threads(threads)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)


VERSIONED_PACKAGES = ("torch", "numpy", "gymnasium", "mujoco", "robosuite", "hydra-core", "omegaconf", "wandb",
                      "hydra-joblib-launcher", "hydra-submitit-launcher", "submitit")


def prepare_run_dir(logdir: str, cfg: DictConfig) -> str:
    """Create the run directory; save the resolved config (config.yaml) and the software versions (versions.json)."""
    os.makedirs(logdir, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(logdir, "config.yaml"), resolve=True)
    with open(os.path.join(logdir, "versions.json"), "w") as f:
        json.dump(software_versions(), f, indent=2)
    return logdir


def package_versions(packages: tuple[str, ...]) -> dict:
    """{"python": version, package: installed version, or None when it is not installed}, keyed as `packages` names
    them."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def software_versions() -> dict:
    """Python, the platform, key packages and the project's git commit, so a run can be reproduced."""
    versions = {**package_versions(VERSIONED_PACKAGES), "platform": platform.platform(),
                "allocator": loaded_allocator()}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        versions["dppo_commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        versions["dppo_commit"] = None
    return versions


def wandb_config(cfg: DictConfig) -> dict | None:
    """The run's `wandb` settings as a dict, or None when `wandb=null` turns wandb off."""
    return None if cfg.get("wandb") is None else OmegaConf.to_container(cfg.wandb, resolve=True)
