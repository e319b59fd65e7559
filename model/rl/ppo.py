"""Clipped-PPO pieces shared by every policy fine-tuned with PPO (diffusion, Gaussian, flow).

Shapes are broadcast: a diffusion policy passes ratios (B, K') with one clip
coefficient per denoising step (1, K'); a Gaussian policy passes (B,) and a scalar.
"""

from dataclasses import dataclass, field

import torch

ADV_EPS = 1e-8


@dataclass
class PPOLoss:
    """Loss terms of one minibatch; pg_loss, v_loss, bc_loss and entropy_loss carry gradients, the rest are metrics.

    entropy_loss is minus the policy's entropy (zero where the policy has no tractable entropy term).
    """

    pg_loss: torch.Tensor
    v_loss: torch.Tensor
    bc_loss: torch.Tensor
    approx_kl: float
    clipfrac: float
    ratio: float
    entropy_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))


class PPOModel:
    """What every PPO-trained policy model provides to the agent (mixed into the diffusion, Gaussian and flow models).

    A model writes `normalize_advantages(advantages)` (its per-minibatch normalization) and
    `normalized_loss(...)`, the loss for advantages already normalized over the whole minibatch. The agent
    normalizes once per minibatch and may then evaluate `normalized_loss` on chunks of it, accumulating
    gradients (train.grad_chunk_size); `loss` is the one-call form.
    """

    def loss(self, cond: dict, stored: dict, returns: torch.Tensor, old_values: torch.Tensor,
             advantages: torch.Tensor, old_log_probs: torch.Tensor, use_bc_loss: bool = False) -> "PPOLoss":
        """PPO loss of a minibatch of B samples with raw advantages (B,), normalized here over the minibatch."""
        return self.normalized_loss(cond, stored, returns, old_values, self.normalize_advantages(advantages),
                                    old_log_probs, use_bc_loss)


def normalize_advantages(advantages: torch.Tensor, normalize: bool = True,
                         quantiles: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Per-minibatch (A - mean) / (std + eps) when `normalize`, then clipping to the given quantiles. (B,) -> (B,)"""
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + ADV_EPS)
    low_q, high_q = quantiles
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
