"""Critics shared by every fine-tuning agent."""

import torch
from torch import nn

from model.common.mlp import make_mlp


class CriticObs(nn.Module):
    """State value V(s) on the flattened observation history.

    cond["state"]: (B, To, Do) -> (B,)
    """

    def __init__(self, cond_dim: int, mlp_dims: list[int], activation: str = "Mish", use_layernorm: bool = False,
                 residual_style: bool = True):
        super().__init__()
        self.net = make_mlp(cond_dim, mlp_dims, 1, residual=residual_style, activation=activation,
                            use_layernorm=use_layernorm)

    def forward(self, cond: dict) -> torch.Tensor:
        state = cond["state"]
        return self.net(state.reshape(state.shape[0], -1)).squeeze(-1)
