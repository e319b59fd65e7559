"""Gaussian MLP policy over action chunks: the behaviour-cloning comparison of the diffusion policy."""

import math

import torch
from torch import nn

from dppo.checkpoint import load_state_dict_checked
from model.common.mlp import make_mlp
from model.common.obs_encoder import obs_encoder_or_flatten
from model.common.policy import ChunkPolicy, Sample
from model.common.pretrained import pretrained_network_state

INITIAL_LOG_STD = -1.0


class GaussianMLP(nn.Module):
    """Mean of the whole chunk from the flattened observations, and a std (fixed or learned per dim).

    std: `fixed_std` when given, learned from `fixed_std` when `learn_fixed_std` (fine-tuning),
    else learned from exp(-1); a learned std is clamped to [std_min, std_max].

    The mean reads the flattened obs history (cond_dim = To*Do), or the features of `obs_encoder` when given.

    cond["state"]: (B, To, Do) [+ what obs_encoder reads] -> mean (B, Ta, Da), std (B, Ta, Da)
    """

    def __init__(self, action_dim: int, horizon_steps: int, cond_dim: int | None,
                 mlp_dims: list[int] = (256, 256, 256), activation: str = "Mish", residual_style: bool = True,
                 use_layernorm: bool = False, tanh_output: bool = True, fixed_std: float | None = 0.1,
                 learn_fixed_std: bool = False, std_min: float = 0.01, std_max: float = 1.0,
                 obs_encoder: nn.Module | None = None):
        super().__init__()
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.obs_encoder = obs_encoder_or_flatten(cond_dim, obs_encoder, "GaussianMLP")
        self.mean_net = make_mlp(self.obs_encoder.out_dim, mlp_dims, horizon_steps * action_dim, residual=residual_style,
                                 activation=activation, out_activation="Tanh" if tanh_output else "Identity",
                                 use_layernorm=use_layernorm)
        self.std_min = std_min
        self.std_max = std_max
        self.fixed_std = None if learn_fixed_std else fixed_std
        if self.fixed_std is None:
            initial_log_std = math.log(fixed_std) if learn_fixed_std else INITIAL_LOG_STD
            self.log_std = nn.Parameter(torch.full((horizon_steps, action_dim), initial_log_std))

    def forward(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean_net(self.obs_encoder(cond)).view(-1, self.horizon_steps, self.action_dim)
        if self.fixed_std is not None:
            std = torch.full_like(mean, self.fixed_std)
        else:
            std = self.log_std.exp().clamp(self.std_min, self.std_max).expand_as(mean)
        return mean, std


class GaussianModel(ChunkPolicy):
    """Gaussian policy over the whole chunk, with the surface of every ChunkPolicy."""

    def __init__(self, network: GaussianMLP, horizon_steps: int, obs_dim: int, action_dim: int, cond_steps: int = 1,
                 randn_clip_value: float = 10.0, final_action_clip_value: float | None = 1.0,
                 network_path: str | None = None, device: str = "cpu"):
        super().__init__(network, horizon_steps, obs_dim, action_dim, cond_steps, randn_clip_value,
                         final_action_clip_value, network_path)
        self.to(device)

    @staticmethod
    def load_pretrained(network: nn.Module, path: str) -> None:
        """A BC policy trained with a fixed std has no log_std: a learned one keeps its initial value."""
        load_state_dict_checked(network, {**network.state_dict(), **pretrained_network_state(path)}, what=path)

    def loss(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        """Negative log-likelihood of the demonstrated chunks, averaged over elements. actions: (B, Ta, Da)."""
        mean, std = self.network(cond)
        return -torch.distributions.Normal(mean, std, validate_args=False).log_prob(actions).mean()

    @torch.no_grad()
    def sample(self, cond: dict, deterministic: bool = False) -> Sample:
        """Action chunks (B, Ta, Da): the mean when deterministic, else mean + std * clipped unit noise."""
        mean, std = self.network(cond)
        actions = mean
        if not deterministic:
            actions = mean + std * torch.randn_like(mean).clamp(-self.randn_clip_value, self.randn_clip_value)
        return Sample(actions=self.clip_final(actions))

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring chunks (B, Ta, Da) and {"actions": the same chunks}, which PPO scores later."""
        actions = self.sample(cond, deterministic=False).actions
        return actions, {"actions": actions}

    def act(self, cond: dict) -> torch.Tensor:
        """The mean chunk (B, Ta, Da), for evaluation."""
        return self.sample(cond, deterministic=True).actions
