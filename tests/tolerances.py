"""Tolerances derived from float32 arithmetic, for quantities that cancel.

approx_kl is the mean of the k3 terms (r - 1) - log r with r = exp(log r). Its terms are near 0 while r is near 1:
float32 exp rounds r to within one ulp (eps * r), r - 1 is then exact (Sterbenz), and so each term carries up to
eps * r of the exp's rounding, far more than its own size allows in relative terms (a term of 3e-5 carries up to
1.2e-7, which depends on the CPU's exp kernel). A log-ratio that is off by d moves a term by |r - 1| * d.
"""

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps


def approx_kl_atol(ratio: torch.Tensor, log_ratio_atol: float = 0.0, computations: int = 2) -> float:
    """Absolute tolerance between two float32 computations of mean((r - 1) - log r) over the ratios `ratio`
    (any shape), whose log-ratios may differ by up to `log_ratio_atol`: the exp's rounding of each computation
    (eps * max r each) plus the log-ratio difference through the terms' slope |r - 1|."""
    ratio = ratio.double()
    return computations * FLOAT32_EPS * ratio.max().item() + log_ratio_atol * (ratio - 1).abs().max().item()
