"""DiffusionMLP: the denoiser of the paper's Gym and robomimic-state experiments."""

import torch
from torch import nn

from model.common.embedding import SinusoidalPosEmb
from model.common.mlp import make_mlp


class DiffusionMLP(nn.Module):
    """Predicts the noise (or the clean chunk) from a noisy action chunk, the step and the observations.

    Input to the MLP: [flattened noisy chunk (Ta*Da), time embedding (time_dim), flattened obs (To*Do)].
    The time embedding is sinusoidal(time_dim) -> Linear(time_dim, 2*time_dim) -> Mish -> Linear(2*time_dim, time_dim).

    x: (B, Ta, Da), t: (B,), cond["state"]: (B, To, Do) -> (B, Ta, Da)
    """

    def __init__(self, action_dim: int, horizon_steps: int, cond_dim: int, time_dim: int = 16,
                 mlp_dims: list[int] = (512, 512, 512), activation: str = "ReLU", out_activation: str = "Identity",
                 use_layernorm: bool = False, residual_style: bool = True):
        super().__init__()
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.cond_dim = cond_dim
        self.time_embedding = nn.Sequential(
            SinusoidalPosEmb(time_dim),
            nn.Linear(time_dim, time_dim * 2),
            nn.Mish(),
            nn.Linear(time_dim * 2, time_dim),
        )
        input_dim = horizon_steps * action_dim + time_dim + cond_dim
        self.mlp = make_mlp(input_dim, mlp_dims, horizon_steps * action_dim, residual=residual_style,
                            activation=activation, out_activation=out_activation, use_layernorm=use_layernorm)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        batch = x.shape[0]
        state = cond["state"].reshape(batch, -1)
        if state.shape[1] != self.cond_dim:
            raise ValueError(
                f"DiffusionMLP expects cond_steps * obs_dim = {self.cond_dim} observation features, got {state.shape[1]}:"
                " match obs_dim/cond_steps in the config to the data."
            )
        h = torch.cat([x.reshape(batch, -1), self.time_embedding(t), state], dim=-1)
        return self.mlp(h).view(batch, self.horizon_steps, self.action_dim)
