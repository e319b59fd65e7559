"""A one-step reach task with a known optimum, for learning tests of every fine-tuning algorithm.

Each episode is one step: the observation is constant, the reward is 1 - ||a - TARGET||^2 and
the episode terminates, so the best return is OPTIMUM = 1 at a = TARGET. `pretrain_toy_policy` fits
a policy to poor demonstrations centred at DEMO_MEAN (return about 0). The reward is positive near
the optimum so that DQL's Q normalization (-Q / mean|Q|) does not divide by values near zero.
"""

import os

import gymnasium as gym
import numpy as np
import torch

from model.common.gaussian import GaussianMLP, GaussianModel
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.mlp import DiffusionMLP
from model.flow.flow import FlowModel

ENV_ID = "dppo-test/ReachBandit-v0"
TARGET = np.array([0.5, -0.3], dtype=np.float32)
DEMO_MEAN = np.array([-0.3, 0.3], dtype=np.float32)
DEMO_STD = 0.1
OPTIMUM = 1.0
OBS_DIM, ACTION_DIM = 2, 2
HIDDEN = [32, 32, 32]
DENOISING_STEPS = 5


class ReachBandit(gym.Env):
    """Constant observation (OBS_DIM,), actions in [-1, 1]^ACTION_DIM, one step, reward 1 - ||a - TARGET||^2."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(OBS_DIM, dtype=np.float32), {}

    def step(self, action):
        reward = OPTIMUM - float(np.sum((np.clip(action, -1.0, 1.0) - TARGET) ** 2))
        return np.zeros(OBS_DIM, dtype=np.float32), reward, True, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=ReachBandit)


def toy_overrides(policy_path, logdir) -> list[str]:
    """Hydra overrides that point a fine-tuning config at the toy task and a tiny policy."""
    return [
        "env.family=gym", f"env.id={ENV_ID}", f"obs_dim={OBS_DIM}", f"action_dim={ACTION_DIM}", "horizon_steps=1", "act_steps=1",
        "cond_steps=1", f"base_policy_path={policy_path}", "normalization_path=null", f"logdir={logdir}",
        "wandb=null", "device=cpu", "env.asynchronous=false", f"model.network.mlp_dims={HIDDEN}",
        "dataset_dir=unused",
    ]


def demo_actions(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, ACTION_DIM) poor demonstrations around DEMO_MEAN."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor(DEMO_MEAN + DEMO_STD * rng.normal(size=(n, 1, ACTION_DIM)), dtype=torch.float32)


def pretrain_toy_policy(directory, kind: str, steps: int = 400, seed: int = 0) -> str:
    """Behaviour cloning of a tiny diffusion, flow or Gaussian policy on the poor demonstrations; returns its file."""
    torch.manual_seed(seed)
    if kind in ("diffusion", "flow"):
        network = DiffusionMLP(action_dim=ACTION_DIM, horizon_steps=1, cond_dim=OBS_DIM, mlp_dims=HIDDEN)
        if kind == "diffusion":
            model = DiffusionModel(network, horizon_steps=1, obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                                   denoising_steps=DENOISING_STEPS)
        else:
            model = FlowModel(network, horizon_steps=1, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    else:
        network = GaussianMLP(action_dim=ACTION_DIM, horizon_steps=1, cond_dim=OBS_DIM, mlp_dims=HIDDEN)
        model = GaussianModel(network, horizon_steps=1, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    actions = demo_actions(1024, seed)
    cond = {"state": torch.zeros(256, 1, OBS_DIM)}
    for step in range(steps):
        idx = torch.randint(len(actions), (256,))
        loss = model.bc_loss(actions[idx], cond)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = os.path.join(directory, f"{kind}_toy.pt")
    torch.save({"network": network.state_dict()}, path)
    return path


COUNTING_ID = "dppo-test/Counting-v0"
COUNTING_NAN_ID = "dppo-test/CountingNaN-v0"
EPISODE_LENGTH = 10


class CountingEnv(gym.Env):
    """Episodes of exactly EPISODE_LENGTH steps with reward 1 per step, for counting tests of the vector env.

    Observation: (instance id, episode index, step in episode), so every episode of every env instance
    has its own id. With `nan_at`, the instance's nan_at-th step returns a NaN observation once.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self, render_mode=None, nan_at: int | None = None):
        self.render_mode = render_mode
        self.nan_at = nan_at
        self.instance = float(os.getpid() * 1000 + id(self) % 1000)
        self.total_steps = 0
        self.episode = -1
        self.t = 0

    def _obs(self):
        return np.array([self.instance, self.episode, self.t], dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.total_steps += 1
        self.t += 1
        if self.total_steps == self.nan_at:
            return np.full(3, np.nan), 1.0, False, False, {}
        return self._obs(), 1.0, self.t == EPISODE_LENGTH, False, {}


for _id, _kwargs in ((COUNTING_ID, {}), (COUNTING_NAN_ID, {"nan_at": 51})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=CountingEnv, kwargs=_kwargs)
