"""Critics shared by every fine-tuning agent."""

import torch
from torch import nn

from model.common.mlp import make_mlp
from model.common.obs_encoder import obs_encoder_or_flatten


class CriticObs(nn.Module):
    """State value V(s) on the flattened observation history (cond_dim = To*Do), or on the features of its own
    `obs_encoder` when given (e.g. a ViT over camera images and proprioception).

    cond["state"]: (B, To, Do) [+ what obs_encoder reads] -> (B,)
    """

    def __init__(self, cond_dim: int | None, mlp_dims: list[int], activation: str = "Mish",
                 use_layernorm: bool = False, residual_style: bool = True, obs_encoder: nn.Module | None = None):
        super().__init__()
        self.obs_encoder = obs_encoder_or_flatten(cond_dim, obs_encoder, "CriticObs")
        self.net = make_mlp(self.obs_encoder.out_dim, mlp_dims, 1, residual=residual_style, activation=activation,
                            use_layernorm=use_layernorm)

    def forward(self, cond: dict) -> torch.Tensor:
        return self.net(self.obs_encoder(cond)).squeeze(-1)


class DoubleCriticObsAct(nn.Module):
    """Two independent action values Q1(s, a), Q2(s, a) on [observation features, flattened action steps];
    the features are the flattened obs history (cond_dim = To*Do) or those of `obs_encoder` when given.

    cond["state"]: (B, To, Do) [+ what obs_encoder reads], actions: (B, action_steps, Da) -> q1, q2: (B,) each.
    Off-policy agents pass the executed part of the chunk (its first act_steps actions).
    """

    def __init__(self, cond_dim: int | None, action_dim: int, action_steps: int, mlp_dims: list[int],
                 activation: str = "Mish", use_layernorm: bool = False, residual_style: bool = True,
                 obs_encoder: nn.Module | None = None):
        super().__init__()
        self.obs_encoder = obs_encoder_or_flatten(cond_dim, obs_encoder, "DoubleCriticObsAct")
        input_dim = self.obs_encoder.out_dim + action_dim * action_steps
        self.q1 = make_mlp(input_dim, mlp_dims, 1, residual=residual_style, activation=activation,
                           use_layernorm=use_layernorm)
        self.q2 = make_mlp(input_dim, mlp_dims, 1, residual=residual_style, activation=activation,
                           use_layernorm=use_layernorm)

    def forward(self, cond: dict, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.obs_encoder(cond), actions.reshape(actions.shape[0], -1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def double_q_loss(q1: torch.Tensor, q2: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE(Q1, y) + MSE(Q2, y); all (B,), targets without gradient."""
    return ((q1 - targets) ** 2).mean() + ((q2 - targets) ** 2).mean()


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of target weights: target <- (1 - tau) * target + tau * source."""
    for target_param, source_param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(source_param, tau)
