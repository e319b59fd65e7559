"""Gaussian MLP policy over action chunks: the behaviour-cloning comparison of the diffusion policy."""

import math

import torch
from torch import nn

from dppo.checkpoint import load_state_dict_checked
from model.common.mlp import make_mlp
from model.common.obs_encoder import obs_encoder_or_flatten
from model.common.policy import FinetunePolicy, Sample
from model.common.pretrained import pretrained_network_state

INITIAL_LOG_STD = -1.0


class GaussianMLP(nn.Module):
    """Mean of the whole chunk from the flattened observations, and a std (fixed or learned per action dim).

    std: `fixed_std` when given, learned from `fixed_std` when `learn_fixed_std` (fine-tuning),
    else learned from exp(-1). A learned std is the reference's: one log-variance per action dimension, `logvar`
    (Da,), shared by the chunk's Ta steps and clamped to [2 log std_min, 2 log std_max]; std = exp(logvar / 2).

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
            self.logvar = nn.Parameter(torch.full((action_dim,), 2 * initial_log_std))

    def forward(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean_net(self.obs_encoder(cond)).view(-1, self.horizon_steps, self.action_dim)
        if self.fixed_std is not None:
            std = torch.full_like(mean, self.fixed_std)
        else:
            logvar = self.logvar.clamp(2 * math.log(self.std_min), 2 * math.log(self.std_max))
            std = (0.5 * logvar).exp().expand_as(mean)
        return mean, std


class GaussianModel(FinetunePolicy):
    """Gaussian policy over the whole chunk, with the surface of every FinetunePolicy.

    For PPO it gives one log-probability term per env sample: the Gaussian log-density averaged over the
    chunk's Ta x Da elements, then clamped to [logprob_min, logprob_max] (as the reference does). Its entropy
    term depends on the weights when the std is learned (`learn_fixed_std` in the network config).
    """

    def __init__(self, network: GaussianMLP, horizon_steps: int, obs_dim: int, action_dim: int, cond_steps: int = 1,
                 randn_clip_value: float = 10.0, final_action_clip_value: float | None = 1.0,
                 logprob_min: float = -5.0, logprob_max: float = 2.0, network_path: str | None = None,
                 device: str = "cpu"):
        super().__init__(network, horizon_steps, obs_dim, action_dim, cond_steps, randn_clip_value,
                         final_action_clip_value, network_path)
        self.logprob_min = logprob_min
        self.logprob_max = logprob_max
        self.to(device)

    @staticmethod
    def load_pretrained(network: nn.Module, path: str) -> None:
        """A BC policy trained with a fixed std has no logvar: a learned one keeps its initial value."""
        load_state_dict_checked(network, {**network.state_dict(), **pretrained_network_state(path)}, what=path)

    @property
    def has_entropy(self) -> bool:
        return self.network.fixed_std is None

    @property
    def n_log_prob_terms(self) -> int:
        return 1

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.network.parameters())

    def distribution(self, cond: dict) -> torch.distributions.Normal:
        mean, std = self.network(cond)
        return torch.distributions.Normal(mean, std, validate_args=False)

    def per_sample_bc_loss(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        """Negative log-likelihood of each demonstrated chunk, averaged over its elements: (B, Ta, Da) -> (B,)."""
        return -self.distribution(cond).log_prob(actions).mean(dim=(-2, -1))

    def draw(self, cond: dict, deterministic: bool = False) -> torch.Tensor:
        """Chunks (B, Ta, Da): the mean when deterministic, else mean + std * clipped unit noise (reparameterized)."""
        mean, std = self.network(cond)
        actions = mean
        if not deterministic:
            actions = mean + std * torch.randn_like(mean).clamp(-self.randn_clip_value, self.randn_clip_value)
        return self.clip_final(actions)

    @torch.no_grad()
    def sample(self, cond: dict, deterministic: bool = False) -> Sample:
        return Sample(actions=self.draw(cond, deterministic))

    @torch.no_grad()
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring chunks (B, Ta, Da) and {"actions": the same chunks, "log_probs": (B, 1) their log-probability}."""
        actions = self.draw(cond)
        stored = {"actions": actions}
        return actions, {**stored, "log_probs": self.log_probs_and_entropy(cond, stored)[0]}

    def act(self, cond: dict) -> torch.Tensor:
        """The mean chunk (B, Ta, Da), for evaluation."""
        return self.sample(cond, deterministic=True).actions

    def sample_differentiable(self, cond: dict) -> torch.Tensor:
        return self.draw(cond)

    def log_probs_and_entropy(self, cond: dict, stored: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1) clamped mean log-density of stored["actions"] (B, Ta, Da) and the mean entropy (B,) of the
        chunk's Gaussian."""
        dist = self.distribution(cond)
        log_prob = dist.log_prob(stored["actions"]).mean(dim=(-2, -1)).clamp(self.logprob_min, self.logprob_max)
        return log_prob[:, None], dist.entropy().mean(dim=(-2, -1))
