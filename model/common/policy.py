"""What every policy over action chunks shares (diffusion, flow, Gaussian)."""

from dataclasses import dataclass

import torch
from torch import nn

from dppo.checkpoint import load_state_dict_checked
from model.common.pretrained import pretrained_network_state


@dataclass
class Sample:
    """actions: (B, Ta, Da) final chunk; chains: (B, C + 1, Ta, Da) last C steps' inputs/outputs, or None;
    chain_means, chain_log_vars: (B, C, Ta, Da) mean and log-variance of the Gaussian step that drew each chain
    entry after the first (the policy's, before any sampling-std floor), or None."""

    actions: torch.Tensor
    chains: torch.Tensor | None = None
    chain_means: torch.Tensor | None = None
    chain_log_vars: torch.Tensor | None = None


class ChunkPolicy(nn.Module):
    """A network over action chunks (B, Ta, Da) conditioned on cond["state"] (B, To, Do).

    The surface the agents use: `loss(actions, cond)` for behaviour cloning,
    `explore(cond) -> (actions, stored)` while fine-tuning (what `stored` holds is up to the
    policy, e.g. a denoising chain), `act(cond)` for deterministic evaluation.
    `network_path` (a pre-training checkpoint or shipped policy file) initializes the network.
    """

    def __init__(self, network: nn.Module, horizon_steps: int, obs_dim: int, action_dim: int, cond_steps: int = 1,
                 randn_clip_value: float = 10.0, final_action_clip_value: float | None = 1.0,
                 network_path: str | None = None):
        super().__init__()
        if network_path is not None:
            self.load_pretrained(network, network_path)
        self.network = network
        self.horizon_steps = horizon_steps
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.cond_steps = cond_steps
        self.randn_clip_value = randn_clip_value
        self.final_action_clip_value = final_action_clip_value

    @staticmethod
    def load_pretrained(network: nn.Module, path: str) -> None:
        """Load the network weights of a pre-training checkpoint; keys and shapes must match exactly."""
        load_state_dict_checked(network, pretrained_network_state(path), what=path)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def clip_final(self, actions: torch.Tensor) -> torch.Tensor:
        """Clip the final chunk to +-final_action_clip_value (no clipping when it is None)."""
        if self.final_action_clip_value is None:
            return actions
        return actions.clamp(-self.final_action_clip_value, self.final_action_clip_value)

    def loss(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        raise NotImplementedError

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def act(self, cond: dict) -> torch.Tensor:
        raise NotImplementedError
