"""The clipped-PPO loss, written against the policy surface (model/common/policy.py), for every policy.

A policy gives n = `n_log_prob_terms` log-probabilities per env sample: K' for a diffusion chain (one PPO term
per fine-tuned denoising step, DPPO), 1 for a whole-chunk policy (Gaussian, flow). Term j gets
- its clip coefficient: exponential interpolation from `clip_ploss_coef_base` (j = 0, the noisiest step) to
  `clip_ploss_coef` (j = n - 1, the step that outputs the action); a single term gets `clip_ploss_coef`;
- its advantage discounted by gamma_denoising ** (n - 1 - j), its distance to the action.
Shapes broadcast: ratios (B, n) against clip coefficients (1, n).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from model.common.policy import FinetunePolicy

ADV_EPS = 1e-8


@dataclass
class PPOSettings:
    """The clipped-PPO loss's settings. A run sets every field from its train.* settings (PPOTrainSettings declares
    them; PPOAgent passes them all); these defaults are the loss's neutral values for direct use (no denoising
    discount, one clip coefficient), not a run's."""

    clip_ploss_coef: float = 0.01
    clip_ploss_coef_base: float = 0.01
    clip_ploss_coef_rate: float = 3.0
    gamma_denoising: float = 1.0
    clip_vloss_coef: float | None = None
    norm_adv: bool = True
    clip_advantage_lower_quantile: float = 0.0
    clip_advantage_upper_quantile: float = 1.0


@dataclass
class PPOLoss:
    """Loss terms of one minibatch; pg_loss, v_loss, bc_loss and entropy_loss carry gradients, the rest are metrics.

    entropy_loss is minus the policy's mean entropy (zero where the policy has no learned entropy).
    """

    pg_loss: torch.Tensor
    v_loss: torch.Tensor
    bc_loss: torch.Tensor
    entropy_loss: torch.Tensor
    approx_kl: float
    clipfrac: float
    ratio: float


def clip_coefficients(n_terms: int, settings: PPOSettings, device=None) -> torch.Tensor:
    """PPO clip coefficient of each term, (n,): base at j = 0, max at j = n - 1.

    c_j = base + (max - base) * (exp(rate * u) - 1) / (exp(rate) - 1), u = j / (n - 1).
    """
    if n_terms == 1:
        return torch.full((1,), settings.clip_ploss_coef, device=device)
    u = torch.arange(n_terms, device=device, dtype=torch.float32) / (n_terms - 1)
    rate = settings.clip_ploss_coef_rate
    shape = (torch.exp(rate * u) - 1) / (math.exp(rate) - 1)
    return settings.clip_ploss_coef_base + (settings.clip_ploss_coef - settings.clip_ploss_coef_base) * shape


def term_discounts(n_terms: int, gamma_denoising: float, device=None) -> torch.Tensor:
    """gamma_denoising ** (n - 1 - j) for term j = 0 (noisiest) .. n - 1 (outputs the action): (n,)."""
    exponents = torch.arange(n_terms - 1, -1, -1, device=device, dtype=torch.float32)
    return gamma_denoising**exponents


def normalize_advantages(advantages: torch.Tensor, settings: PPOSettings) -> torch.Tensor:
    """Per-minibatch (A - mean) / (std + eps) when `norm_adv`, then clipping to the configured quantiles.
    (B,) -> (B,)"""
    if settings.norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + ADV_EPS)
    low_q, high_q = settings.clip_advantage_lower_quantile, settings.clip_advantage_upper_quantile
    if (low_q, high_q) != (0.0, 1.0):
        advantages = advantages.clamp(torch.quantile(advantages, low_q), torch.quantile(advantages, high_q))
    return advantages


def clipped_policy_loss(ratio: torch.Tensor, advantages: torch.Tensor,
                        clip: torch.Tensor | float) -> torch.Tensor:
    """mean(max(-A r, -A clip(r, 1 - c, 1 + c))); ratio, advantages and clip broadcast together."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.max(unclipped, clipped).mean()


def value_loss(values: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor,
               clip: float | None = None) -> torch.Tensor:
    """0.5 * MSE(V, returns); with `clip`, the max with the loss of old_values + clip(V - old_values, +-clip). (B,)"""
    if clip is None:
        return 0.5 * ((values - returns) ** 2).mean()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()


@torch.no_grad()
def ratio_metrics(log_ratio: torch.Tensor, clip: torch.Tensor | float) -> dict:
    """approx_kl (the k3 estimator mean((r - 1) - log r)), clipfrac (|r - 1| > clip) and the mean ratio."""
    ratio = log_ratio.exp()
    return {
        "approx_kl": ((ratio - 1) - log_ratio).mean().item(),
        "clipfrac": ((ratio - 1).abs() > clip).float().mean().item(),
        "ratio": ratio.mean().item(),
    }


def ppo_loss(policy: FinetunePolicy, critic: nn.Module, cond: dict, stored: dict, returns: torch.Tensor,
             old_values: torch.Tensor, advantages: torch.Tensor, old_log_probs: torch.Tensor, settings: PPOSettings,
             use_bc_loss: bool = False) -> PPOLoss:
    """PPO loss of B env samples with advantages already normalized over their whole minibatch.

    cond: {key: (B, To, ...)}; stored: what `policy.explore` kept, {key: (B, ...)}; returns, old_values,
    advantages: (B,); old_log_probs: (B, n) from rollout time. With `use_bc_loss`, bc_loss is minus the mean
    log-probability of chains drawn by the frozen pre-trained policy (policies that keep one).
    """
    log_probs, entropy = policy.log_probs_and_entropy(cond, stored)
    n_terms = log_probs.shape[1]
    log_ratio = log_probs - old_log_probs
    clip = clip_coefficients(n_terms, settings, log_probs.device)[None, :]
    adv = advantages[:, None] * term_discounts(n_terms, settings.gamma_denoising, log_probs.device)[None, :]
    pg_loss = clipped_policy_loss(log_ratio.exp(), adv, clip)
    v_loss = value_loss(critic(cond), returns, old_values, settings.clip_vloss_coef)
    zero = torch.zeros((), device=log_probs.device)
    bc_loss = -policy.bc_reference_log_probs(cond).mean() if use_bc_loss else zero
    entropy_loss = -entropy.mean() if entropy is not None else zero
    return PPOLoss(pg_loss=pg_loss, v_loss=v_loss, bc_loss=bc_loss, entropy_loss=entropy_loss,
                   **ratio_metrics(log_ratio, clip))
