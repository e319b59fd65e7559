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


class DoubleCriticObsAct(nn.Module):
    """Two independent action values Q1(s, a), Q2(s, a) on [flattened obs history, flattened action steps].

    cond["state"]: (B, To, Do), actions: (B, action_steps, Da) -> q1, q2: (B,) each.
    Off-policy agents pass the executed part of the chunk (its first act_steps actions).
    """

    def __init__(self, cond_dim: int, action_dim: int, action_steps: int, mlp_dims: list[int],
                 activation: str = "Mish", use_layernorm: bool = False, residual_style: bool = True):
        super().__init__()
        input_dim = cond_dim + action_dim * action_steps
        self.q1 = make_mlp(input_dim, mlp_dims, 1, residual=residual_style, activation=activation,
                           use_layernorm=use_layernorm)
        self.q2 = make_mlp(input_dim, mlp_dims, 1, residual=residual_style, activation=activation,
                           use_layernorm=use_layernorm)

    def forward(self, cond: dict, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = cond["state"]
        x = torch.cat([state.reshape(state.shape[0], -1), actions.reshape(actions.shape[0], -1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def double_q_loss(q1: torch.Tensor, q2: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE(Q1, y) + MSE(Q2, y); all (B,), targets without gradient."""
    return ((q1 - targets) ** 2).mean() + ((q2 - targets) ** 2).mean()


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of target weights: target <- (1 - tau) * target + tau * source."""
    for target_param, source_param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(source_param, tau)
