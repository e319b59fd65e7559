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


def resolve_resume(resume, name_dir: str) -> tuple[str, str] | None:
    """Where to resume from: None (fresh run), True (latest run under `name_dir`), or a run dir / checkpoint path.

    Returns (checkpoint_path, run_dir) or None.
    """
    if resume is None or resume is False:
        return None
    if resume is True or str(resume).lower() == "true":
        candidates = sorted(
            os.path.join(name_dir, d) for d in (os.listdir(name_dir) if os.path.isdir(name_dir) else [])
            if os.path.isfile(os.path.join(name_dir, d, "checkpoint", "last.pt"))
        )
        if not candidates:
            raise FileNotFoundError(f"resume=true found no run with checkpoint/last.pt under {name_dir}: "
                                    "start a fresh run or pass resume=<run dir>.")
        run_dir = candidates[-1]
        return os.path.join(run_dir, "checkpoint", "last.pt"), run_dir
    path = os.path.abspath(str(resume))
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint", "last.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume={resume}: no checkpoint at {path}; pass a run dir or a checkpoint file.")
    return path, os.path.dirname(os.path.dirname(path))


def wandb_config(cfg: DictConfig) -> dict | None:
    """The run's `wandb` settings as a dict, or None when `wandb=null` turns wandb off."""
    return None if cfg.get("wandb") is None else OmegaConf.to_container(cfg.wandb, resolve=True)
