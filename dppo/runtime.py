"""Start-up of every run: seeding, device choice, run directory."""

import os
import random

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


def prepare_run_dir(logdir: str, cfg: DictConfig) -> str:
    """Create the run directory and save the resolved config in it as config.yaml."""
    os.makedirs(logdir, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(logdir, "config.yaml"), resolve=True)
    return logdir


def wandb_config(cfg: DictConfig) -> dict | None:
    """The run's `wandb` settings as a dict, or None when `wandb=null` turns wandb off."""
    return None if cfg.get("wandb") is None else OmegaConf.to_container(cfg.wandb, resolve=True)
