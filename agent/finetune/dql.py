"""DQL: diffusion Q-learning from replay (model/rl/dql.py), for any policy with a differentiable sample.

Each iteration the rollout joins the replay buffer (rewards scaled by
`reward_scale_const`); then G = new samples / batch_size * replay_ratio steps,
each on a fresh replayed batch: one critic step (double-Q TD), one actor step
(BC + eta * normalized Q through the differentiable sample; skipped during the
`n_critic_warmup_itr` first iterations), one Polyak target update.
"""

import copy
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent
from agent.finetune.metrics import mean_metrics
from agent.finetune.replay import replay_gradient_steps
from agent.finetune.rollout import Rollout
from agent.finetune.settings import ReplayRatioSettings, TargetNetworkSettings
from dppo.schema import setting
from model.common.critic import soft_update
from model.rl.dql import dql_actor_loss, dql_critic_loss


@dataclass
class DQLTrainSettings(ReplayRatioSettings, TargetNetworkSettings):
    eta: float = setting("weight of the normalized Q term in the actor loss (< 0: descends Q)")
    bc_on: str = setting("BC term on the freshly drawn chunk (the reference) or on the replayed one",
                         choices=("drawn", "replay"))


class DQLAgent(FinetuneAgent):
    off_policy = True
    train_settings = DQLTrainSettings

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.critic = self.build_critic("critic")
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = self.add_optimizer("actor", self.model.actor_parameters(), role="actor")
        self.critic_optimizer = self.add_optimizer("critic", self.critic.parameters(), role="critic")

    def update(self, rollout: Rollout) -> dict:
        train = self.cfg.train
        gradient_steps = replay_gradient_steps(rollout.n_steps * rollout.n_envs, train.batch_size, train.replay_ratio)
        history = {"critic_loss": [], "actor_loss": [], "bc_loss": [], "q_loss": [], "q_gap": [], "actor_grad_norm": []}
        for _ in range(gradient_steps):
            batch = self.replay_sample(train.batch_size)
            with self.autocast():
                critic_loss = dql_critic_loss(self.model, self.critic, self.critic_target, batch, train.gamma,
                                              self.act_steps)
            self.critic_optimizer.zero_grad()
            critic_loss.backward()
            self.optimizer_step(self.critic_optimizer)
            history["critic_loss"].append(critic_loss.item())

            if self.update_actor:
                with self.autocast():
                    actor_loss, terms = dql_actor_loss(self.model, self.critic, batch, train.eta, self.act_steps,
                                                       train.bc_on)
                self.actor_optimizer.zero_grad()
                actor_loss.backward(inputs=self.model.actor_parameters())  # not the critic's weight gradients
                history["actor_grad_norm"].append(gradient_norm(self.model.actor_parameters()))
                self.actor_step(self.actor_optimizer)
                history["actor_loss"].append(actor_loss.item())
                for key, value in terms.items():
                    history[key].append(value)
            soft_update(self.critic_target, self.critic, train.tau)
        metrics = mean_metrics(history)
        metrics["gradient_steps"] = gradient_steps
        return metrics


def gradient_norm(parameters) -> float:
    """L2 norm of the gradients of `parameters` (before any clipping)."""
    norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0
