"""DAWR's model: a diffusion policy (every denoising step fine-tuned) and a state-value critic."""

import torch
from torch import nn

from model.diffusion.diffusion import DiffusionModel


class AWRDiffusion(DiffusionModel):
    """Diffusion policy + V(s). The actor loss is the advantage-weighted `per_sample_loss` (agent/finetune/awr.py)."""

    def __init__(self, critic: nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.critic = critic.to(self.device)

    def critic_loss(self, cond: dict, targets: torch.Tensor) -> torch.Tensor:
        """MSE(V(s), TD(lambda) target); cond["state"]: (B, To, Do), targets: (B,)."""
        return ((self.critic(cond) - targets) ** 2).mean()
