"""Shared fixtures: a tiny Hopper-shaped dataset, Hydra config composition, and torch's threads (1, or
DPPO_TEST_THREADS: script/test_variations.sh runs the suite's numerical tests with 1 and 2)."""

import os

import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dppo.config import register_resolvers, validate_config

torch.set_num_threads(int(os.environ.get("DPPO_TEST_THREADS", "1")))
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cfg")

# A tiny network for every config, so a whole run takes seconds on CPU.
TINY_MODEL = [
    "model.network.mlp_dims=[32,32,32]",
    "wandb=null",
    "device=cpu",
]
TINY_CRITIC = ["critic.mlp_dims=[32,32,32]"]


def write_hopper_dataset(directory, n_episodes=4, length=30, seed=0):
    """A Hopper-shaped dataset (obs 11, action 3) of smooth random episodes: directory/train.npz."""
    rng = np.random.default_rng(seed)
    steps = n_episodes * length
    t = np.arange(steps)[:, None]
    states = np.sin(0.1 * t + rng.normal(size=(1, 11))).astype(np.float32) + 1.25
    actions = np.tanh(states[:, :3] + 0.1 * rng.normal(size=(steps, 3))).astype(np.float32)
    os.makedirs(directory, exist_ok=True)
    np.savez(os.path.join(directory, "train.npz"), states=states, actions=actions,
             traj_lengths=np.full(n_episodes, length, dtype=np.int64))
    return os.path.join(directory, "train.npz")


def compose_config(config_name: str, overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture
def compose_cfg():
    return compose_config


def run_config(config_name, overrides):
    cfg = compose_config(config_name, overrides)
    validate_config(cfg)
    return hydra.utils.get_class(cfg._target_)(cfg).run()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny diffusion policy pre-trained for 2 epochs on a tiny dataset: (dataset_dir, run_dir)."""
    root = tmp_path_factory.mktemp("pretrain")
    dataset_dir = root / "data"
    write_hopper_dataset(dataset_dir)
    run_dir = root / "run"
    run_config("pre_diffusion_mlp", TINY_MODEL + [
        f"dataset_dir={dataset_dir}", f"logdir={run_dir}", "train.n_epochs=2", "train.batch_size=16",
        f"export_policy_path={dataset_dir}/pretrained/diffusion_mlp.pt",
    ])
    return dataset_dir, run_dir


def finetune_overrides(dataset_dir, run_dir, n_train_itr):
    return TINY_MODEL + TINY_CRITIC + [
        f"dataset_dir={dataset_dir}", f"logdir={run_dir}", "env.n_envs=2", "env.asynchronous=false",
        "train.n_steps=8", f"train.n_train_itr={n_train_itr}", "train.batch_size=8", "train.update_epochs=2",
        "train.eval_interval=2", "train.reset_at_iteration=true", "denoising_steps=10", "ft_denoising_steps=4",
    ]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: load tests run for docs/RELIABILITY.md, not in CI (pytest -m slow)")


def pytest_collection_modifyitems(config, items):
    """Skip `slow` tests unless they are asked for with `-m slow`."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="load test: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
