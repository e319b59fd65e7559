"""DPPO loss: PPO over the denoising steps of the fine-tuned diffusion policy."""

import math
from dataclasses import dataclass

import torch
from torch import nn

from model.diffusion.diffusion_rl import FinetuneDiffusion


@dataclass
class PPOLoss:
    """Loss terms of one minibatch; pg_loss, v_loss and bc_loss carry gradients, the rest are metrics."""

    pg_loss: torch.Tensor
    v_loss: torch.Tensor
    bc_loss: torch.Tensor
    approx_kl: float
    clipfrac: float
    ratio: float


class PPODiffusion(FinetuneDiffusion):
    """Diffusion policy + critic V(s) trained with PPO over (environment step, denoising step) pairs.

    The critic is trained by regression on the GAE lambda-returns (advantage + V(s) of
    the rollout), optionally with value clipping; the paper does not say how V is trained.
    """

    def __init__(self, critic: nn.Module, gamma_denoising: float = 0.99, clip_ploss_coef: float = 0.01,
                 clip_ploss_coef_base: float = 0.001, clip_ploss_coef_rate: float = 3.0,
                 clip_vloss_coef: float | None = None, norm_adv: bool = True,
                 clip_advantage_lower_quantile: float = 0.0, clip_advantage_upper_quantile: float = 1.0,
                 reward_horizon: int | None = None, logprob_min: float = -5.0, logprob_max: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.critic = critic.to(self.device)
        self.gamma_denoising = gamma_denoising
        self.clip_ploss_coef = clip_ploss_coef
        self.clip_ploss_coef_base = clip_ploss_coef_base
        self.clip_ploss_coef_rate = clip_ploss_coef_rate
        self.clip_vloss_coef = clip_vloss_coef
        self.norm_adv = norm_adv
        self.advantage_quantiles = (clip_advantage_lower_quantile, clip_advantage_upper_quantile)
        self.reward_horizon = reward_horizon or self.horizon_steps
        self.logprob_min = logprob_min
        self.logprob_max = logprob_max

    def clip_coefficients(self) -> torch.Tensor:
        """PPO clip coefficient of each fine-tuned step, (K',): base at the noisiest step j = 0, max at j = K' - 1.

        c_j = base + (max - base) * (exp(rate * u) - 1) / (exp(rate) - 1), u = j / (K' - 1).
        """
        n = self.ft_denoising_steps
        if n == 1:
            return torch.full((1,), self.clip_ploss_coef, device=self.device)
        u = torch.arange(n, device=self.device, dtype=torch.float32) / (n - 1)
        shape = (torch.exp(self.clip_ploss_coef_rate * u) - 1) / (math.exp(self.clip_ploss_coef_rate) - 1)
        return self.clip_ploss_coef_base + (self.clip_ploss_coef - self.clip_ploss_coef_base) * shape

    def denoising_discounts(self) -> torch.Tensor:
        """gamma_denoising ** (K' - 1 - j) for fine-tuned step j = 0 (noisiest) .. K' - 1 (outputs the action): (K',)."""
        exponents = torch.arange(self.ft_denoising_steps - 1, -1, -1, device=self.device, dtype=torch.float32)
        return self.gamma_denoising ** exponents

    def reduced_log_probs(self, cond: dict, chains: torch.Tensor, network: nn.Module | None = None) -> torch.Tensor:
        """Per (sample, fine-tuned step) log-probability: element-wise clamp to [logprob_min, logprob_max],
        then the mean over the first `reward_horizon` actions and all action dims.

        chains: (B, K' + 1, Ta, Da) -> (B, K')
        """
        log_prob = self.chain_log_probs(cond, chains, network)
        log_prob = log_prob.clamp(self.logprob_min, self.logprob_max)
        return log_prob[:, :, : self.reward_horizon].mean(dim=(-2, -1))

    def normalize_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """Per-minibatch normalization, then clipping to the configured quantiles. (B,) -> (B,)"""
        if self.norm_adv:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        low_q, high_q = self.advantage_quantiles
        if (low_q, high_q) != (0.0, 1.0):
            advantages = advantages.clamp(torch.quantile(advantages, low_q), torch.quantile(advantages, high_q))
        return advantages

    def loss(self, cond: dict, chains: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor,
             advantages: torch.Tensor, old_log_probs: torch.Tensor, use_bc_loss: bool = False) -> PPOLoss:
        """PPO loss of a minibatch of B environment samples, each carrying its K' denoising steps.

        cond["state"]: (B, To, Do); chains: (B, K' + 1, Ta, Da); returns, old_values, advantages: (B,);
        old_log_probs: (B, K') from `reduced_log_probs` at rollout time.
        """
        new_log_probs = self.reduced_log_probs(cond, chains)
        log_ratio = new_log_probs - old_log_probs
        ratio = log_ratio.exp()
        clip = self.clip_coefficients()[None, :]

        adv = self.normalize_advantages(advantages)[:, None] * self.denoising_discounts()[None, :]
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()

        values = self.critic(cond)
        if self.clip_vloss_coef is not None:
            clipped = old_values + (values - old_values).clamp(-self.clip_vloss_coef, self.clip_vloss_coef)
            v_loss = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()
        else:
            v_loss = 0.5 * ((values - returns) ** 2).mean()

        bc_loss = torch.zeros((), device=self.device)
        if use_bc_loss:
            base_chains = self.sample(cond, deterministic=False, chain_steps=self.ft_denoising_steps,
                                      network=self.network).chains
            bc_loss = -self.reduced_log_probs(cond, base_chains).mean()

        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean().item()
            clipfrac = ((ratio - 1).abs() > clip).float().mean().item()
        return PPOLoss(pg_loss=pg_loss, v_loss=v_loss, bc_loss=bc_loss, approx_kl=approx_kl, clipfrac=clipfrac,
                       ratio=ratio.mean().item())
