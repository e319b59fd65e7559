"""DiffusionMLP: the denoiser of the paper's Gym and robomimic-state experiments."""

import torch
from torch import nn

from model.common.embedding import embed_distinct_steps, time_embedding_mlp
from model.common.mlp import make_mlp
from model.common.obs_encoder import obs_encoder_or_flatten


class DiffusionMLP(nn.Module):
    """Predicts the noise (or the clean chunk) from a noisy action chunk, the step and the observations.

    Input to the MLP: [flattened noisy chunk (Ta*Da), time embedding (time_dim), observation features]. The
    features are the flattened obs history (To*Do = cond_dim), or those of `obs_encoder` (e.g. a ViT over
    camera images and proprioception) when given. The time embedding is sinusoidal(time_dim) ->
    Linear(time_dim, 2*time_dim) -> Mish -> Linear(2*time_dim, time_dim).

    x: (B, Ta, Da), t: (B,), cond["state"]: (B, To, Do) [+ what obs_encoder reads] -> (B, Ta, Da)
    """

    def __init__(self, action_dim: int, horizon_steps: int, cond_dim: int | None, time_dim: int = 16,
                 mlp_dims: list[int] = (512, 512, 512), activation: str = "ReLU", out_activation: str = "Identity",
                 use_layernorm: bool = False, residual_style: bool = True, obs_encoder: nn.Module | None = None):
        super().__init__()
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.obs_encoder = obs_encoder_or_flatten(cond_dim, obs_encoder, "DiffusionMLP")
        self.time_embedding = time_embedding_mlp(time_dim, hidden_mult=2)
        input_dim = horizon_steps * action_dim + time_dim + self.obs_encoder.out_dim
        self.mlp = make_mlp(input_dim, mlp_dims, horizon_steps * action_dim, residual=residual_style,
                            activation=activation, out_activation=out_activation, use_layernorm=use_layernorm)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.denoise(x, t, self.encode(cond))

    def encode(self, cond: dict) -> torch.Tensor:
        """Observation features (B, F): computed once per chunk by the sampler, whatever the number of steps."""
        return self.obs_encoder(cond)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """x: (B, Ta, Da), t: (B,) steps or a 0-dim step shared by every row, features: (B, F) -> (B, Ta, Da)."""
        batch = x.shape[0]
        time_features = embed_distinct_steps(self.time_embedding, t.view(-1)).expand(batch, -1)
        h = torch.cat([x.reshape(batch, -1), time_features, features], dim=-1)
        return self.mlp(h).view(batch, self.horizon_steps, self.action_dim)
