"""Stable-Baselines3's SAC shaped as the DSRL reference builds it (github ajwagen/dsrl train_dsrl.py), for the
reference fixtures of DSRL (make_dsrl_fixture.py) and the benchmark's baseline (script/bench.py).

The reference's SB3 fork adds `post_linear_modules=[LayerNorm]` to SAC's policy: every hidden layer of the actor
and of each critic is Linear -> LayerNorm -> Tanh. Stable-Baselines3 2.9 has that option in `create_mlp` but not in
SACPolicy, so `dsrl_sac` builds the stock SAC and swaps in those layers (then remakes the optimizers over them);
everything else (squashed Gaussian, losses, entropy coefficient, target updates) is the stock SAC the reference
ran for DSRL-SAC.
"""

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import configure
from stable_baselines3.common.torch_layers import create_mlp
from torch import nn


class NoiseSpaceEnv(gym.Env):
    """Only the spaces matter: observations (obs_dim,), the noise action in [-action_magnitude, action_magnitude]."""

    def __init__(self, obs_dim: int, noise_dim: int, action_magnitude: float):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-action_magnitude, action_magnitude, (noise_dim,), np.float32)

    def reset(self, seed=None, options=None):
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, np.float32), 0.0, False, False, {}


def layer_norm_mlp(input_dim: int, output_dim: int, net_arch: list[int]) -> nn.Sequential:
    return nn.Sequential(*create_mlp(input_dim, output_dim, net_arch, nn.Tanh, post_linear_modules=[nn.LayerNorm]))


def dsrl_sac(obs_dim: int, noise_dim: int, net_arch: list[int], batch_size: int = 256, action_magnitude: float = 1.5,
             lr: float = 3e-4, tau: float = 0.005, gamma: float = 0.99, target_entropy: float = 0.0,
             device: str = "cpu") -> SAC:
    """SAC as train_dsrl.py configures it (ent_coef "auto" from 1.0, 2 critics, Tanh), with layer norms."""
    env = NoiseSpaceEnv(obs_dim, noise_dim, action_magnitude)
    model = SAC("MlpPolicy", env, learning_rate=lr, batch_size=batch_size, tau=tau, gamma=gamma, learning_starts=0,
                ent_coef="auto", target_entropy=target_entropy, device=device,
                policy_kwargs=dict(net_arch=list(net_arch), activation_fn=nn.Tanh, n_critics=2))
    policy = model.policy
    policy.actor.latent_pi = layer_norm_mlp(obs_dim, -1, net_arch)
    for critic in (policy.critic, policy.critic_target):
        critic.q_networks = nn.ModuleList([layer_norm_mlp(obs_dim + noise_dim, 1, net_arch) for _ in range(2)])
        for index, q_net in enumerate(critic.q_networks):
            critic.add_module(f"qf{index}", q_net)
    policy.to(model.device)
    policy.critic_target.load_state_dict(policy.critic.state_dict())
    policy.actor.optimizer = torch.optim.Adam(policy.actor.parameters(), lr=lr)
    policy.critic.optimizer = torch.optim.Adam(policy.critic.parameters(), lr=lr)
    model._create_aliases()
    model.set_logger(configure(None, []))
    return model
