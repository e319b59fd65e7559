"""Implicit diffusion Q-learning (IDQL, Hansen-Estruch et al. 2023) as a fine-tuning baseline of DPPO.

IQL critics: V(s) by expectile regression on min(Q_target(s, a)) of replayed
actions, Q(s, a) by TD towards r + gamma (1 - terminated) V(s'), Q_target by
Polyak averaging. The actor is trained with the plain diffusion loss of replayed
chunks; the policy acts by drawing candidate chunks from the diffusion model and
choosing among them with the critics.
"""

import copy

import torch
from torch import nn

from model.common.critic import double_q_loss, soft_update
from model.diffusion.diffusion import DiffusionModel


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|expectile - 1(diff < 0)| * diff^2): the asymmetric L2 of IQL; diff = target - prediction."""
    weight = torch.where(diff > 0, expectile, 1 - expectile)
    return (weight * diff**2).mean()


class IDQLDiffusion(DiffusionModel):
    """Diffusion policy + double Q(s, a) with target + V(s); candidate selection when acting.

    Exploring: `num_sample` candidates per state, one drawn with probability proportional to
    `exploration_weight` where Q - V > 0 and 1 - exploration_weight elsewhere (the implicit
    policy). Evaluating: `eval_num_sample` deterministic candidates, the one of highest Q.
    """

    def __init__(self, critic_q: nn.Module, critic_v: nn.Module, act_steps: int, expectile: float = 0.8,
                 num_sample: int = 10, eval_num_sample: int = 20, exploration_weight: float = 0.7, **kwargs):
        super().__init__(**kwargs)
        self.critic_q = critic_q.to(self.device)
        self.target_q = copy.deepcopy(self.critic_q).requires_grad_(False)
        self.critic_v = critic_v.to(self.device)
        self.act_steps = act_steps
        self.expectile = expectile
        self.num_sample = num_sample
        self.eval_num_sample = eval_num_sample
        self.exploration_weight = exploration_weight

    # ---- critics ----------------------------------------------------------------------------
    def v_loss(self, cond: dict, actions: torch.Tensor) -> torch.Tensor:
        """Expectile regression of V(s) on min(Q_target(s, a)); actions: (B, Ta, Da) replayed chunks."""
        with torch.no_grad():
            q = torch.min(*self.target_q(cond, actions[:, : self.act_steps]))
        return expectile_loss(q - self.critic_v(cond), self.expectile)

    def q_loss(self, cond: dict, next_cond: dict, actions: torch.Tensor, rewards: torch.Tensor,
               terminated: torch.Tensor, gamma: float) -> torch.Tensor:
        """Double-Q TD loss towards r + gamma (1 - terminated) V(s'); rewards, terminated: (B,)."""
        q1, q2 = self.critic_q(cond, actions[:, : self.act_steps])
        with torch.no_grad():
            targets = rewards + gamma * (~terminated) * self.critic_v(next_cond)
        return double_q_loss(q1, q2, targets)

    def update_target(self, tau: float) -> None:
        soft_update(self.target_q, self.critic_q, tau)

    # ---- acting -------------------------------------------------------------------------------
    @torch.no_grad()
    def candidates(self, cond: dict, n: int, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """n candidate chunks per state and their min target Q: (n, B, Ta, Da), (n, B), and cond repeated n times."""
        batch = cond["state"].shape[0]
        repeated = {key: value.repeat(n, *([1] * (value.ndim - 1))) for key, value in cond.items()}  # row s*B + b
        chunks = self.sample(repeated, deterministic=deterministic).actions
        q = torch.min(*self.target_q(repeated, chunks[:, : self.act_steps]))
        return chunks.view(n, batch, *chunks.shape[1:]), q.view(n, batch), repeated

    @torch.no_grad()
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """One of `num_sample` exploring candidates per state, drawn with the implicit-policy weights."""
        chunks, q, repeated = self.candidates(cond, self.num_sample, deterministic=False)
        advantage = q - self.critic_v(repeated).view_as(q)
        weights = torch.where(advantage > 0, self.exploration_weight, 1 - self.exploration_weight)
        choice = torch.multinomial((weights / weights.sum(0)).T, 1).squeeze(-1)  # (B,)
        return chunks[choice, torch.arange(chunks.shape[1], device=chunks.device)], {}

    @torch.no_grad()
    def act(self, cond: dict) -> torch.Tensor:
        """The deterministic candidate of highest Q among `eval_num_sample`: (B, Ta, Da)."""
        chunks, q, _ = self.candidates(cond, self.eval_num_sample, deterministic=True)
        return chunks[q.argmax(0), torch.arange(chunks.shape[1], device=chunks.device)]
