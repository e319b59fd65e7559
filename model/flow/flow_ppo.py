"""ReinFlow-style PPO fine-tuning of a flow policy through learned noise injection.

Each of the K Euler steps becomes a Gaussian step x_{k+1} ~ N(x_k + v(x_k, t_k, s) dt, sigma_k^2)
whose std comes from a small noise network sigma(x_k, t_k, s) in [sigma_min, sigma_max]. Every step
then has an exact log-density, and the log-probability of the chain x_0 -> x_K is their sum
(the x_0 prior does not depend on the weights). As in DPPO, each step's element-wise log-density
is clamped to [logprob_min, logprob_max] and averaged over the executed actions of the chunk
(`reward_horizon`) and the action dims, then the K steps are summed: one PPO ratio per env sample.
Evaluation integrates the flow without noise.
"""

import math

import torch
from torch import nn

from model.common.embedding import SinusoidalPosEmb
from model.common.mlp import make_mlp
from model.flow.flow import FlowModel
from model.rl.ppo import PPOLoss, PPOModel, clipped_policy_loss, normalize_advantages, ratio_metrics, value_loss


class NoiseNetwork(nn.Module):
    """sigma(x, t, s) per chunk element, in [sigma_min, sigma_max] (log-space tanh squashing).

    x: (B, Ta, Da), t: (B,) already scaled like the velocity network's, cond["state"]: (B, To, Do) -> (B, Ta, Da).
    The output layer starts at zero, so every sigma starts at sqrt(sigma_min * sigma_max).
    """

    def __init__(self, action_dim: int, horizon_steps: int, cond_dim: int, mlp_dims: list[int] = (128, 128, 128),
                 time_dim: int = 16, activation: str = "Mish", sigma_min: float = 0.08, sigma_max: float = 0.16):
        super().__init__()
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"NoiseNetwork needs 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}.")
        self.horizon_steps = horizon_steps
        self.action_dim = action_dim
        self.log_sigma_range = (math.log(sigma_min), math.log(sigma_max))
        self.time_embedding = SinusoidalPosEmb(time_dim)
        self.mlp = make_mlp(horizon_steps * action_dim + time_dim + cond_dim, mlp_dims, horizon_steps * action_dim,
                            residual=True, activation=activation)
        nn.init.zeros_(self.mlp.output_layer.weight)
        nn.init.zeros_(self.mlp.output_layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        batch = x.shape[0]
        h = torch.cat([x.reshape(batch, -1), self.time_embedding(t), cond["state"].reshape(batch, -1)], dim=-1)
        squashed = (torch.tanh(self.mlp(h)) + 1) / 2
        low, high = self.log_sigma_range
        return torch.exp(low + (high - low) * squashed).view(batch, self.horizon_steps, self.action_dim)


class PPOFlow(PPOModel, FlowModel):
    """Flow policy + noise network + critic V(s), trained with clipped PPO on the chain's log-probability."""

    def __init__(self, critic: nn.Module, noise_network: NoiseNetwork, clip_ploss_coef: float = 0.01,
                 clip_vloss_coef: float | None = None, norm_adv: bool = True, reward_horizon: int | None = None,
                 logprob_min: float = -5.0, logprob_max: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.critic = critic.to(self.device)
        self.noise_network = noise_network.to(self.device)
        self.clip_ploss_coef = clip_ploss_coef
        self.clip_vloss_coef = clip_vloss_coef
        self.norm_adv = norm_adv
        self.reward_horizon = reward_horizon or self.horizon_steps
        self.logprob_min = logprob_min
        self.logprob_max = logprob_max

    def actor_parameters(self) -> list[nn.Parameter]:
        """The velocity network and the noise network."""
        return list(self.network.parameters()) + list(self.noise_network.parameters())

    def step_distribution(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean x + v dt and std sigma of the noisy Euler step from x at times t: (B, Ta, Da) each."""
        mean = x + self.velocity(x, t, cond) / self.inference_steps
        return mean, self.noise_network(x, t * self.time_scale, cond)

    @torch.no_grad()
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Noisy Euler chains: actions (B, Ta, Da) and {"chains": (B, K + 1, Ta, Da), x_0 first, the action last,
        "log_probs": (B,) the chain's log-probability from the steps' own means and stds, equal to `log_probs`}."""
        batch = cond["state"].shape[0]
        x = self.initial_noise(batch)
        chain, step_log_probs = [x], []
        for t in self.times():
            mean, std = self.step_distribution(x, torch.full((batch,), t, device=self.device), cond)
            noise = torch.randn_like(x).clamp(-self.randn_clip_value, self.randn_clip_value)
            x = mean + std * noise
            chain.append(x)
            step_log_probs.append(torch.distributions.Normal(mean, std, validate_args=False).log_prob(x))
        log_probs = self.chain_log_prob(torch.stack(step_log_probs, dim=1))
        return x, {"chains": torch.stack(chain, dim=1), "log_probs": log_probs}

    def step_log_probs(self, cond: dict, chains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Element-wise log N(x_{k+1}; mean_k, sigma_k^2) of each step and the stds: (B, K, Ta, Da) each.

        All K steps go through the networks as one batch.
        """
        batch, n_steps = chains.shape[0], self.inference_steps
        shape = (batch * n_steps, self.horizon_steps, self.action_dim)
        x_in, x_out = chains[:, :-1].reshape(shape), chains[:, 1:].reshape(shape)
        t = torch.tensor(self.times(), device=chains.device).repeat(batch)
        cond_rep = {key: value.repeat_interleave(n_steps, dim=0) for key, value in cond.items()}
        mean, std = self.step_distribution(x_in, t, cond_rep)
        log_prob = torch.distributions.Normal(mean, std, validate_args=False).log_prob(x_out)
        return log_prob.view(batch, n_steps, *shape[1:]), std.view(batch, n_steps, *shape[1:])

    def chain_log_prob(self, step_log_probs: torch.Tensor) -> torch.Tensor:
        """(B, K, Ta, Da) element-wise step log-densities -> (B,): clamp, mean over executed actions and dims,
        sum over the K steps."""
        log_prob = step_log_probs.clamp(self.logprob_min, self.logprob_max)[:, :, : self.reward_horizon]
        return log_prob.mean(dim=(-2, -1)).sum(dim=1)

    def log_probs(self, cond: dict, stored: dict) -> torch.Tensor:
        """Log-probability of each stored chain (B, K + 1, Ta, Da) -> (B,)."""
        return self.chain_log_prob(self.step_log_probs(cond, stored["chains"])[0])

    def normalize_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """Per-minibatch normalization (when norm_adv). (B,) -> (B,)"""
        return normalize_advantages(advantages, self.norm_adv)

    def normalized_loss(self, cond: dict, stored: dict, returns: torch.Tensor, old_values: torch.Tensor,
                        advantages: torch.Tensor, old_log_probs: torch.Tensor, use_bc_loss: bool = False) -> PPOLoss:
        """PPO loss of B environment samples with their chains (B, K + 1, Ta, Da) and normalized advantages;
        other tensors (B,).

        entropy_loss = -(mean Gaussian entropy of the noisy steps), weighted by train.ent_coef in the agent.
        """
        if use_bc_loss:
            raise ValueError("use_bc_loss is implemented for diffusion policies only: set train.use_bc_loss=false.")
        log_prob, std = self.step_log_probs(cond, stored["chains"])
        log_ratio = self.chain_log_prob(log_prob) - old_log_probs
        pg_loss = clipped_policy_loss(log_ratio.exp(), advantages, self.clip_ploss_coef)
        v_loss = value_loss(self.critic(cond), returns, old_values, self.clip_vloss_coef)
        entropy = (0.5 * math.log(2 * math.pi * math.e) + std.log()).mean()
        return PPOLoss(pg_loss=pg_loss, v_loss=v_loss, bc_loss=torch.zeros((), device=self.device),
                       entropy_loss=-entropy, **ratio_metrics(log_ratio, self.clip_ploss_coef))
