"""Diffusion Q-learning (DQL, Wang et al. 2023) as a fine-tuning baseline of DPPO.

Two Q networks on (s, executed actions) with Polyak-averaged targets. The actor
loss is the diffusion BC loss of replayed chunks plus eta times a normalized Q
term of chunks drawn through the whole denoising chain with gradients:
    L = BC + eta * (-Q_i(s, a~pi) / mean|Q_j(s, a~pi)|), (i, j) a random order of the two critics.
(The reference evaluates its BC term on the freshly drawn chunks; here it is DQL's
BC term on the replayed ones.)
"""

import copy

import torch
from torch import nn

from model.common.critic import double_q_loss, soft_update
from model.diffusion.diffusion import DiffusionModel


class DQLDiffusion(DiffusionModel):
    """Diffusion policy (every denoising step trained) + double critic Q(s, a) and its target copy."""

    def __init__(self, critic: nn.Module, act_steps: int, **kwargs):
        super().__init__(**kwargs)
        self.critic = critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.act_steps = act_steps

    def critic_loss(self, cond: dict, next_cond: dict, actions: torch.Tensor, rewards: torch.Tensor,
                    terminated: torch.Tensor, gamma: float) -> torch.Tensor:
        """Double-Q TD loss with targets r + gamma (1 - terminated) min Q'(s', a'), a' ~ pi(s') exploring.

        cond / next_cond["state"]: (B, To, Do); actions: (B, Ta, Da); rewards, terminated: (B,).
        """
        q1, q2 = self.critic(cond, actions[:, : self.act_steps])
        with torch.no_grad():
            next_actions = self.sample(next_cond, deterministic=False).actions
            next_q = torch.min(*self.critic_target(next_cond, next_actions[:, : self.act_steps]))
            targets = rewards + gamma * (~terminated) * next_q
        return double_q_loss(q1, q2, targets)

    def actor_loss(self, cond: dict, actions: torch.Tensor, eta: float) -> tuple[torch.Tensor, dict]:
        """BC loss of the replayed chunks (B, Ta, Da) + eta * normalized -Q of chunks drawn with gradients.

        Returns the loss and its terms as metrics.
        """
        drawn = self.sample(cond, deterministic=False, requires_grad=True).actions
        q1, q2 = self.critic(cond, drawn[:, : self.act_steps])
        if torch.rand(()) < 0.5:
            q1, q2 = q2, q1
        q_loss = -q1.mean() / q2.abs().mean().detach()
        bc_loss = self.loss(actions, cond)
        return bc_loss + eta * q_loss, {"bc_loss": bc_loss.item(), "q_loss": q_loss.item()}

    def update_target(self, tau: float) -> None:
        soft_update(self.critic_target, self.critic, tau)
