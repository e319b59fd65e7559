"""Diffusion Q-learning (DQL, Wang et al. 2023) as a fine-tuning algorithm, for any policy with a differentiable
sample (diffusion: the whole denoising chain; flow: the noisy Euler chain; Gaussian: the reparameterized draw).

Two Q networks on (s, executed actions) with Polyak-averaged targets. The actor loss is a BC term plus eta times a
normalized Q term of chunks a ~ pi(s) drawn with gradients:
    L = BC + eta * (-Q_i(s, a) / mean|Q_j(s, a)|), (i, j) a random order of the two critics.
The BC term is, as in the reference, the policy's BC loss of that freshly drawn chunk a (gradients reach the
policy through the loss and through a), which keeps a on the policy's own support (`bc_on: drawn`);
`bc_on: replay` evaluates it on the replayed chunks instead (DQL's offline form).
"""

import torch
from torch import nn

from model.common.critic import double_q_loss
from model.common.policy import FinetunePolicy

BC_TARGETS = ("drawn", "replay")


def dql_critic_loss(policy: FinetunePolicy, critic: nn.Module, critic_target: nn.Module, batch: dict, gamma: float,
                    act_steps: int) -> torch.Tensor:
    """Double-Q TD loss with targets r + gamma (1 - terminated) min Q'(s', a'), a' ~ pi(s') exploring.

    batch: obs / next_obs {key: (B, To, ...)}, actions (B, Ta, Da), rewards (B,), terminated (B,) bool.
    """
    q1, q2 = critic(batch["obs"], batch["actions"][:, :act_steps])
    with torch.no_grad():
        next_actions = policy.explore_actions(batch["next_obs"])
        next_q = torch.min(*critic_target(batch["next_obs"], next_actions[:, :act_steps]))
        targets = batch["rewards"] + gamma * (~batch["terminated"]) * next_q
    return double_q_loss(q1, q2, targets)


def dql_actor_loss(policy: FinetunePolicy, critic: nn.Module, batch: dict, eta: float, act_steps: int,
                   bc_on: str = "drawn") -> tuple[torch.Tensor, dict]:
    """BC + eta * normalized -Q of chunks drawn with gradients; returns the loss and its terms as metrics,
    with q_gap = mean min-Q of the drawn chunks - that of the replayed ones (how far the actor moved from the
    data in the critics' eyes)."""
    if bc_on not in BC_TARGETS:
        raise ValueError(f"bc_on={bc_on!r}: use one of {BC_TARGETS}.")
    cond = batch["obs"]
    drawn = policy.sample_differentiable(cond)
    q1, q2 = critic(cond, drawn[:, :act_steps])
    if torch.rand(()) < 0.5:
        q1, q2 = q2, q1
    q_loss = -q1.mean() / q2.abs().mean().detach()
    bc_loss = policy.bc_loss(drawn if bc_on == "drawn" else batch["actions"], cond)
    with torch.no_grad():
        q_replayed = torch.min(*critic(cond, batch["actions"][:, :act_steps])).mean()
        q_gap = torch.min(q1, q2).mean() - q_replayed
    return bc_loss + eta * q_loss, {"bc_loss": bc_loss.item(), "q_loss": q_loss.item(), "q_gap": q_gap.item()}
