"""Noise schedules of the diffusion core."""

import math

import torch


def cosine_beta_schedule(denoising_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021).

    alpha_bar(t) = f(t) / f(0), f(t) = cos(((t / K) + s) / (1 + s) * pi / 2)^2, t = 0..K;
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped to [0, max_beta].

    Returns betas: (K,) float64, betas[k] is the variance added going from step k to k + 1.
    """
    t = torch.arange(denoising_steps + 1, dtype=torch.float64)
    f = torch.cos(((t / denoising_steps) + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0.0, max_beta)


def ddim_timesteps(denoising_steps: int, ddim_steps: int) -> torch.Tensor:
    """Uniformly spaced DDPM steps visited by DDIM: (ddim_steps,) = [0, r, 2r, ...], r = K // ddim_steps."""
    if not 0 < ddim_steps <= denoising_steps:
        raise ValueError(f"ddim_steps must be in 1..denoising_steps ({denoising_steps}), got {ddim_steps}.")
    ratio = denoising_steps // ddim_steps
    return torch.arange(ddim_steps, dtype=torch.long) * ratio
