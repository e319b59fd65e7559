"""Reward- and advantage-weighted regression (DRWR, DAWR): the weights and DAWR's critic loss."""

import torch

SCORE_EPS = 1e-6


def standardize(scores: torch.Tensor, eps: float = SCORE_EPS, unbiased: bool = True) -> torch.Tensor:
    """(x - mean) / (std + eps) over all elements; the unbiased std (DAWR) or the population std (DRWR), as the
    reference does."""
    return (scores - scores.mean()) / (scores.std(unbiased=unbiased) + eps)


def exponential_weights(scores: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """min(exp(beta * scores), max_weight), element-wise, without gradient.

    The reference multiplies standardized returns (DRWR) or advantages (DAWR) by beta = 10
    (AWR papers write exp(A / beta) on raw advantages; with standardized scores the
    reference's product is what produced the DPPO paper's baseline numbers).
    """
    return torch.exp(beta * scores.detach()).clamp(max=max_weight)


def value_regression_loss(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DAWR's critic loss, mean((V(s) - target)^2) element-wise over (B,) (the reference broadcasts a (B, 1)
    prediction against (B,) targets into a B x B mean; see docs)."""
    return ((values - targets) ** 2).mean()
