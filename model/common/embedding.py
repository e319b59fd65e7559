"""Embeddings of the denoising step (or flow time)."""

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """t: (B,) integer or float steps -> (B, dim) [sin(t w_i), cos(t w_i)], w_i = 10000^(-i/(dim/2-1))."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2 != 0 or dim < 4:
            raise ValueError(f"SinusoidalPosEmb needs an even dim >= 4, got {dim}.")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        dtype = torch.get_default_dtype()  # float32 unless a caller (a float64 gradient check) sets otherwise
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=dtype) * -scale)
        angles = t.to(dtype)[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def time_embedding_mlp(time_dim: int, hidden_mult: int) -> nn.Sequential:
    """Sinusoidal(time_dim) -> Linear(time_dim, hidden_mult * time_dim) -> Mish -> Linear(.., time_dim).

    t: (B,) -> (B, time_dim). DiffusionMLP uses hidden_mult 2, the UNet 4 (as in the reference).
    """
    return nn.Sequential(
        SinusoidalPosEmb(time_dim),
        nn.Linear(time_dim, time_dim * hidden_mult),
        nn.Mish(),
        nn.Linear(time_dim * hidden_mult, time_dim),
    )


def embed_distinct_steps(embedding: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """embedding(t) for t: (B,) steps -> (B, dim), running `embedding` once per distinct step and gathering.

    A PPO minibatch of B samples x K' denoising steps holds only K' distinct steps in its B * K' rows, so the
    embedding MLP and its backward run on K' rows instead of B * K'; rows are the same as embedding(t)'s.
    """
    if t.numel() == 1:  # the sampler's one step for every row
        return embedding(t)
    steps, index = torch.unique(t, return_inverse=True)
    return embedding(steps)[index]
