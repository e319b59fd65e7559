"""A short 1-D reach with a time limit and a known optimum, for learning tests of every fine-tuning algorithm.

The agent starts at x = 0 and moves by STEP_SIZE * a per step (a in [-1, 1]) towards GOAL; each step costs the
distance left, -|x - GOAL|; the episode terminates when the distance falls below TOLERANCE and is truncated by the
time limit after MAX_STEPS steps. Policies act in chunks of HORIZON actions (all executed), so one chunk-step is
HORIZON env steps: gamma, bootstrapping on truncation, termination, chunking and auto-resets all take part.
The best return is OPTIMUM (full speed to the goal); `pretrain_toy_policy` fits a policy to poor demonstrations
that drift away from it (return about DEMO_RETURN).
"""

import os

import gymnasium as gym
import numpy as np
import torch

from model.common.gaussian import GaussianMLP, GaussianModel
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.mlp import DiffusionMLP
from model.flow.flow import FlowModel

ENV_ID = "dppo-test/Reach1D-v0"
GOAL, STEP_SIZE, TOLERANCE, MAX_STEPS = 0.5, 0.1, 0.05, 10
OPTIMUM = -(0.4 + 0.3 + 0.2 + 0.1)  # a = 1 reaches the goal on the 5th step
DEMO_MEAN, DEMO_STD = -0.3, 0.1
DEMO_RETURN = -sum(GOAL + STEP_SIZE * -DEMO_MEAN * (t + 1) for t in range(MAX_STEPS))  # about -6.65
OBS_DIM, ACTION_DIM, HORIZON = 1, 1, 2
HIDDEN = [32, 32, 32]
DENOISING_STEPS = 5


class Reach1D(gym.Env):
    """Observation (x,), action (a,) in [-1, 1], x <- clip(x + STEP_SIZE * a, -1, 1), reward -|x - GOAL|."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x], dtype=np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + STEP_SIZE * np.clip(action[0], -1.0, 1.0), -1.0, 1.0))
        distance = abs(self.x - GOAL)
        return np.array([self.x], dtype=np.float32), -distance, distance < TOLERANCE, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=Reach1D, max_episode_steps=MAX_STEPS)


def toy_overrides(policy_path, logdir) -> list[str]:
    """Hydra overrides that point a fine-tuning config at the toy task and a tiny policy."""
    return [
        "env.family=gym", f"env.id={ENV_ID}", f"obs_dim={OBS_DIM}", f"action_dim={ACTION_DIM}",
        f"horizon_steps={HORIZON}", f"act_steps={HORIZON}", "cond_steps=1", f"base_policy_path={policy_path}",
        "normalization_path=null", f"logdir={logdir}", "wandb=null", "device=cpu", "env.asynchronous=false",
        f"model.network.mlp_dims={HIDDEN}", "dataset_dir=unused", f"max_episode_steps={MAX_STEPS}",
    ]


def demo_actions(n: int, seed: int = 0) -> torch.Tensor:
    """(n, HORIZON, ACTION_DIM) poor demonstrations around DEMO_MEAN."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor(DEMO_MEAN + DEMO_STD * rng.normal(size=(n, HORIZON, ACTION_DIM)), dtype=torch.float32)


def pretrain_toy_policy(directory, kind: str, steps: int = 400, seed: int = 0) -> str:
    """Behaviour cloning of a tiny diffusion, flow or Gaussian policy on the poor demonstrations; returns its file."""
    torch.manual_seed(seed)
    if kind in ("diffusion", "flow"):
        network = DiffusionMLP(action_dim=ACTION_DIM, horizon_steps=HORIZON, cond_dim=OBS_DIM, mlp_dims=HIDDEN)
        if kind == "diffusion":
            model = DiffusionModel(network, horizon_steps=HORIZON, obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                                   denoising_steps=DENOISING_STEPS)
        else:
            model = FlowModel(network, horizon_steps=HORIZON, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    else:
        network = GaussianMLP(action_dim=ACTION_DIM, horizon_steps=HORIZON, cond_dim=OBS_DIM, mlp_dims=HIDDEN)
        model = GaussianModel(network, horizon_steps=HORIZON, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    actions = demo_actions(1024, seed)
    cond = {"state": torch.rand(256, 1, OBS_DIM) * 2 - 1}  # demonstrations from everywhere on the line
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
