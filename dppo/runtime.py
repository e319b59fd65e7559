"""Start-up of every run: seeding, device choice, run directory."""

import importlib.metadata
import json
import os
import platform
import random
import subprocess

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


VERSIONED_PACKAGES = ("torch", "numpy", "gymnasium", "mujoco", "robosuite", "hydra-core", "omegaconf", "wandb")


def prepare_run_dir(logdir: str, cfg: DictConfig) -> str:
    """Create the run directory; save the resolved config (config.yaml) and the software versions (versions.json)."""
    os.makedirs(logdir, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(logdir, "config.yaml"), resolve=True)
    with open(os.path.join(logdir, "versions.json"), "w") as f:
        json.dump(software_versions(), f, indent=2)
    return logdir


def software_versions() -> dict:
    """Python, key packages and the project's git commit, so a run can be reproduced."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
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
