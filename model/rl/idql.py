"""Implicit diffusion Q-learning (IDQL, Hansen-Estruch et al. 2023) as a fine-tuning algorithm, for any policy.

IQL critics: V(s) by expectile regression on min(Q_target(s, a)) of replayed actions, Q(s, a) by TD towards
r + gamma (1 - terminated) V(s'), Q_target by Polyak averaging. The actor is trained with the plain BC loss of
replayed chunks; the agent acts by drawing candidate chunks from the policy and choosing among them with the
critics (`CandidateSelector`).
"""

import torch
from torch import nn

from model.common.critic import double_q_loss
from model.common.policy import ChunkPolicy


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|expectile - 1(diff < 0)| * diff^2): the asymmetric L2 of IQL; diff = target - prediction."""
    weight = torch.where(diff > 0, expectile, 1 - expectile)
    return (weight * diff**2).mean()


def idql_v_loss(critic_v: nn.Module, target_q: nn.Module, batch: dict, expectile: float,
                act_steps: int) -> torch.Tensor:
    """Expectile regression of V(s) on min(Q_target(s, a)) of the replayed chunks batch["actions"] (B, Ta, Da)."""
    with torch.no_grad():
        q = torch.min(*target_q(batch["obs"], batch["actions"][:, :act_steps]))
    return expectile_loss(q - critic_v(batch["obs"]), expectile)


def idql_q_loss(critic_q: nn.Module, critic_v: nn.Module, batch: dict, gamma: float, act_steps: int) -> torch.Tensor:
    """Double-Q TD loss towards r + gamma (1 - terminated) V(s'); rewards, terminated: (B,)."""
    q1, q2 = critic_q(batch["obs"], batch["actions"][:, :act_steps])
    with torch.no_grad():
        targets = batch["rewards"] + gamma * (~batch["terminated"]) * critic_v(batch["next_obs"])
    return double_q_loss(q1, q2, targets)


class CandidateSelector:
    """IDQL's acting: candidate chunks from the policy, chosen with the critics.

    Exploring: `num_sample` exploring candidates per state, one drawn with probability proportional to
    `exploration_weight` where Q_target - V > 0 and 1 - exploration_weight elsewhere (the implicit policy).
    Evaluating: `eval_num_sample` deterministic candidates, the one of highest min Q_target.
    """

    def __init__(self, policy: ChunkPolicy, target_q: nn.Module, critic_v: nn.Module, act_steps: int,
                 num_sample: int = 20, eval_num_sample: int = 20, exploration_weight: float = 0.7):
        self.policy = policy
        self.target_q = target_q
        self.critic_v = critic_v
        self.act_steps = act_steps
        self.num_sample = num_sample
        self.eval_num_sample = eval_num_sample
        self.exploration_weight = exploration_weight

    @torch.no_grad()
    def candidates(self, cond: dict, n: int, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """n candidate chunks per state and their min target Q: (n, B, Ta, Da), (n, B) (drawn as one batch whose
        row s * B + b is candidate s of state b)."""
        batch = cond["state"].shape[0]
        repeated = {key: value.repeat(n, *([1] * (value.ndim - 1))) for key, value in cond.items()}
        chunks = self.policy.act(repeated) if deterministic else self.policy.explore_actions(repeated)
        q = torch.min(*self.target_q(repeated, chunks[:, : self.act_steps]))
        return chunks.view(n, batch, *chunks.shape[1:]), q.view(n, batch)

    @torch.no_grad()
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """One of `num_sample` exploring candidates per state, drawn with the implicit-policy weights; stores nothing."""
        chunks, q = self.candidates(cond, self.num_sample, deterministic=False)
        advantage = q - self.critic_v(cond)[None, :]  # V(s) once per state, not once per candidate
        weights = torch.where(advantage > 0, self.exploration_weight, 1 - self.exploration_weight)
        choice = torch.multinomial((weights / weights.sum(0)).T, 1).squeeze(-1)  # (B,)
        return chunks[choice, torch.arange(chunks.shape[1], device=chunks.device)], {}

    @torch.no_grad()
    def act(self, cond: dict) -> torch.Tensor:
        """The deterministic candidate of highest min Q_target among `eval_num_sample`: (B, Ta, Da)."""
        chunks, q = self.candidates(cond, self.eval_num_sample, deterministic=True)
        return chunks[q.argmax(0), torch.arange(chunks.shape[1], device=chunks.device)]
