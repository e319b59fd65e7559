"""DPPO loss: PPO over the denoising steps of the fine-tuned diffusion policy."""

import math

import torch
from torch import nn

from model.diffusion.diffusion_rl import FinetuneDiffusion
from model.rl.ppo import PPOLoss, PPOModel, clipped_policy_loss, normalize_advantages, ratio_metrics, value_loss


class PPODiffusion(PPOModel, FinetuneDiffusion):
    """Diffusion policy + critic V(s) trained with PPO over (environment step, denoising step) pairs.

    What the rollout stores per env step is the chain of the K' fine-tuned steps (see `explore`).
    The critic is trained by regression on the GAE lambda-returns (advantage + V(s) of
    the rollout), optionally with value clipping; the paper does not say how V is trained.
    `reward_horizon` (the configs set it to act_steps, as the reference does) limits the
    log-probability average to the actions of the chunk that are executed.
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
        if reward_horizon is not None and not 0 < reward_horizon <= self.horizon_steps:
            raise ValueError(f"reward_horizon={reward_horizon} must be in 1..horizon_steps ({self.horizon_steps}): "
                             "set it to act_steps.")
        self.reward_horizon = reward_horizon or self.horizon_steps
        self.logprob_min = logprob_min
        self.logprob_max = logprob_max

    def actor_parameters(self) -> list[nn.Parameter]:
        """What the actor optimizer trains: the fine-tuned copy of the denoiser."""
        return list(self.actor_ft.parameters())

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
        return self.reduce_log_probs(self.chain_log_probs(cond, chains, network))

    def reduce_log_probs(self, log_prob: torch.Tensor) -> torch.Tensor:
        """(B, K', Ta, Da) element-wise log-probabilities -> (B, K'): clamp, mean over executed actions and dims."""
        log_prob = log_prob.clamp(self.logprob_min, self.logprob_max)
        return log_prob[:, :, : self.reward_horizon].mean(dim=(-2, -1))

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring chunks (B, Ta, Da) and {"chains": (B, K' + 1, Ta, Da), "log_probs": (B, K')}.

        The log-probabilities of the chain come from the means and variances the sampler already computed, so
        the update need not run the K' steps again for them; they equal `log_probs(cond, stored)` (tested).
        """
        sample = self.sample(cond, deterministic=False, chain_steps=self.ft_denoising_steps)
        step_log_probs = self.step_log_probs(sample.chain_means, sample.chain_log_vars, sample.chains[:, 1:])
        return sample.actions, {"chains": sample.chains, "log_probs": self.reduce_log_probs(step_log_probs)}

    def log_probs(self, cond: dict, stored: dict) -> torch.Tensor:
        """The PPO log-probabilities of what `explore` stored: (B, K')."""
        return self.reduced_log_probs(cond, stored["chains"])

    def normalize_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """Per-minibatch normalization, then clipping to the configured quantiles. (B,) -> (B,)"""
        return normalize_advantages(advantages, self.norm_adv, self.advantage_quantiles)

    def normalized_loss(self, cond: dict, stored: dict, returns: torch.Tensor, old_values: torch.Tensor,
                        advantages: torch.Tensor, old_log_probs: torch.Tensor, use_bc_loss: bool = False) -> PPOLoss:
        """PPO loss of B environment samples, each carrying its K' denoising steps.

        cond["state"]: (B, To, Do); stored["chains"]: (B, K' + 1, Ta, Da); returns, old_values: (B,);
        advantages: (B,) normalized over the whole minibatch (`normalize_advantages`); old_log_probs: (B, K')
        from rollout time.
        """
        log_ratio = self.log_probs(cond, stored) - old_log_probs
        clip = self.clip_coefficients()[None, :]
        adv = advantages[:, None] * self.denoising_discounts()[None, :]
        pg_loss = clipped_policy_loss(log_ratio.exp(), adv, clip)
        v_loss = value_loss(self.critic(cond), returns, old_values, self.clip_vloss_coef)

        bc_loss = torch.zeros((), device=self.device)
        if use_bc_loss:
            base_chains = self.sample(cond, deterministic=False, chain_steps=self.ft_denoising_steps,
                                      network=self.network).chains
            bc_loss = -self.reduced_log_probs(cond, base_chains).mean()
        return PPOLoss(pg_loss=pg_loss, v_loss=v_loss, bc_loss=bc_loss, **ratio_metrics(log_ratio, clip))
