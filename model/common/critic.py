"""Critics shared by every fine-tuning agent."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.common.mlp import make_activation, make_mlp
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


class CriticEnsemble(nn.Module):
    """n independent critics Q_i(s, x) on [flattened obs history, flattened x], computed as one batched network:
    each layer's weights of the n critics are stacked, (n, d_in, d_out), and applied with one torch.baddbmm, so the
    n critics cost the kernel launches of one. Every hidden layer is Linear -> [LayerNorm] -> activation, the
    output Linear runs in float32 (as OutputLinear); each critic is initialized as nn.Linear / nn.LayerNorm are.

    cond["state"]: (B, To, Do), x: (B, ...) flattened to (B, x_dim) -> (n, B), row i the values of critic i.
    """

    def __init__(self, cond_dim: int, x_dim: int, mlp_dims: list[int], n_critics: int = 2, activation: str = "Tanh",
                 use_layernorm: bool = True):
        super().__init__()
        dims = [cond_dim + x_dim, *mlp_dims, 1]
        self.n_critics = n_critics
        self.use_layernorm = use_layernorm
        self.activation = make_activation(activation)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
            self.weights.append(nn.Parameter(torch.empty(n_critics, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_critics, 1, d_out).uniform_(-bound, bound)))
        n_hidden = len(mlp_dims) if use_layernorm else 0
        self.norm_weights = nn.ParameterList([nn.Parameter(torch.ones(n_critics, 1, d)) for d in mlp_dims[:n_hidden]])
        self.norm_biases = nn.ParameterList([nn.Parameter(torch.zeros(n_critics, 1, d)) for d in mlp_dims[:n_hidden]])

    def forward(self, cond: dict, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = torch.cat([cond["state"].reshape(batch, -1), x.reshape(batch, -1)], dim=-1)
        h = h.expand(self.n_critics, *h.shape)  # (n, B, d_in), no copy
        for layer in range(len(self.weights) - 1):
            h = torch.baddbmm(self.biases[layer], h, self.weights[layer])
            if self.use_layernorm:
                h = F.layer_norm(h, h.shape[-1:])
                h = torch.addcmul(self.norm_biases[layer], h, self.norm_weights[layer])
            h = self.activation(h)
        with torch.autocast(device_type=h.device.type, enabled=False):
            out = torch.baddbmm(self.biases[-1], h.to(self.weights[-1].dtype), self.weights[-1])
        return out.squeeze(-1)


def double_q_loss(q1: torch.Tensor, q2: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE(Q1, y) + MSE(Q2, y); all (B,), targets without gradient."""
    return ((q1 - targets) ** 2).mean() + ((q2 - targets) ** 2).mean()


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of target weights: target <- (1 - tau) * target + tau * source, as one foreach kernel over
    the parameters (off-policy agents call it after every one of their many small gradient steps)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
