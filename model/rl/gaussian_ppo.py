"""Gaussian PPO: the Gaussian-policy baseline of DPPO, fine-tuned from Gaussian behaviour cloning."""

import torch
from torch import nn

from model.common.gaussian import GaussianModel
from model.rl.ppo import PPOLoss, PPOModel, clipped_policy_loss, normalize_advantages, ratio_metrics, value_loss


class PPOGaussian(PPOModel, GaussianModel):
    """Gaussian MLP policy over the whole chunk + critic V(s), trained with standard clipped PPO.

    One PPO term per environment sample: log pi(a | s) is the Gaussian log-density averaged over
    the chunk's Ta x Da elements, then clamped to [logprob_min, logprob_max] (as the reference does).
    The std is learned (`learn_fixed_std` in the network config), starting from the BC policy's.
    """

    def __init__(self, critic: nn.Module, clip_ploss_coef: float = 0.01, clip_vloss_coef: float | None = None,
                 norm_adv: bool = True, logprob_min: float = -5.0, logprob_max: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.critic = critic.to(self.device)
        self.clip_ploss_coef = clip_ploss_coef
        self.clip_vloss_coef = clip_vloss_coef
        self.norm_adv = norm_adv
        self.logprob_min = logprob_min
        self.logprob_max = logprob_max

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.network.parameters())

    def log_probs(self, cond: dict, stored: dict) -> torch.Tensor:
        """Clamped mean log-density of stored["actions"]: (B, Ta, Da) -> (B,)."""
        mean, std = self.network(cond)
        log_prob = torch.distributions.Normal(mean, std, validate_args=False).log_prob(stored["actions"])
        log_prob = log_prob.mean(dim=(-2, -1))
        return log_prob.clamp(self.logprob_min, self.logprob_max)

    def normalize_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """Per-minibatch normalization (when norm_adv). (B,) -> (B,)"""
        return normalize_advantages(advantages, self.norm_adv)

    def normalized_loss(self, cond: dict, stored: dict, returns: torch.Tensor, old_values: torch.Tensor,
                        advantages: torch.Tensor, old_log_probs: torch.Tensor, use_bc_loss: bool = False) -> PPOLoss:
        """PPO loss of B environment samples with normalized advantages; every tensor argument (B,) except
        stored["actions"]."""
        if use_bc_loss:
            raise ValueError("use_bc_loss is implemented for diffusion policies only: set train.use_bc_loss=false.")
        log_ratio = self.log_probs(cond, stored) - old_log_probs
        pg_loss = clipped_policy_loss(log_ratio.exp(), advantages, self.clip_ploss_coef)
        v_loss = value_loss(self.critic(cond), returns, old_values, self.clip_vloss_coef)
        return PPOLoss(pg_loss=pg_loss, v_loss=v_loss, bc_loss=torch.zeros((), device=self.device),
                       **ratio_metrics(log_ratio, self.clip_ploss_coef))
