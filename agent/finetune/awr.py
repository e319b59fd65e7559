"""DAWR: advantage-weighted regression of a policy (any policy with a BC loss), with replay.

Each iteration the rollout joins a replay buffer of the last `buffer_size`
chunk-steps per env (rewards scaled by `reward_scale_const`). With
G = new samples / batch_size * replay_ratio gradient steps:
1. V's targets are the TD(lambda) returns over the buffer (per env, in time order, restarting at
   episode ends, at episode starts and around cut steps) under the current V;
   G / critic_update_ratio critic steps regress V on them.
2. Advantages = TD(lambda) return - V under the updated critic; G actor steps on
   random batches: advantages standardized per batch, weights
   w = min(exp(beta * A), max_adv_weight), BC loss of the replayed chunks weighted by w.
Cut steps (worker restarts, simulator failures) are never drawn.
"""

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent
from agent.finetune.metrics import mean_metrics
from agent.finetune.replay import replay_gradient_steps
from agent.finetune.returns import gae_from_critic, segment_ends
from agent.finetune.rollout import Rollout, flatten_steps, index_samples
from agent.finetune.settings import ReplayRatioSettings
from dppo.schema import setting
from model.rl.weighted_regression import exponential_weights, standardize, value_regression_loss


@dataclass
class AWRTrainSettings(ReplayRatioSettings):
    gae_lambda: float = setting("TD(lambda) of the critic's targets", low=0, high=1)
    beta: float = setting("inverse temperature of the weights exp(beta * standardized advantage) (< 0: prefers the worst)")
    max_adv_weight: float = setting("the weights' upper clip", above=0)
    critic_update_ratio: int = setting("actor steps per critic step", low=1)


class AWRAgent(FinetuneAgent):
    off_policy = True
    train_settings = AWRTrainSettings

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.critic = self.build_critic("critic")
        self.actor_optimizer = self.add_optimizer("actor", self.model.actor_parameters(), role="actor")
        self.critic_optimizer = self.add_optimizer("critic", self.critic.parameters(), role="critic")

    def td_lambda(self, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(TD(lambda) returns, V(s)) over the replay's fields (S, N, ...), both flattened to (S * N,)."""
        train = self.cfg.train
        breaks = segment_ends(data["ends"], data["firsts"], data["cut"])
        with self.autocast():
            advantages, values = gae_from_critic(self.critic, data["obs"], data["next_obs"], data["rewards"],
                                                 data["terminated"], breaks, train.gamma, train.gae_lambda,
                                                 train.batch_size)
        return (advantages + values).reshape(-1), values.reshape(-1)

    def update(self, rollout: Rollout) -> dict:
        train, model = self.cfg.train, self.model
        gradient_steps = replay_gradient_steps(rollout.n_steps * rollout.n_envs, train.batch_size, train.replay_ratio)
        data = self.replay.ordered()
        valid = ~flatten_steps(data["cut"])  # cut steps never happened: never drawn
        obs, actions = index_samples(flatten_steps(data["obs"]), valid), flatten_steps(data["actions"])[valid]
        n_samples = actions.shape[0]
        history = {"critic_loss": [], "actor_loss": []}

        targets = self.td_lambda(data)[0][valid]
        for _ in range(gradient_steps // train.critic_update_ratio):
            idx = self.rank_share(self.shared_randint(n_samples, train.batch_size))
            with self.autocast():
                critic_loss = value_regression_loss(self.critic(index_samples(obs, idx)), targets[idx])
            self.critic_optimizer.zero_grad()
            critic_loss.backward()
            self.optimizer_step(self.critic_optimizer)
            history["critic_loss"].append(critic_loss.item())

        targets, values = self.td_lambda(data)
        advantages = (targets - values)[valid]
        for _ in range(gradient_steps):
            idx = self.shared_randint(n_samples, train.batch_size)
            # advantages standardized over the whole batch, then each rank takes its share
            weights = self.rank_share(exponential_weights(standardize(advantages[idx]), train.beta, train.max_adv_weight))
            idx = self.rank_share(idx)
            with self.autocast():
                actor_loss = (model.per_sample_bc_loss(actions[idx], index_samples(obs, idx)) * weights).mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_step(self.actor_optimizer)
            history["actor_loss"].append(actor_loss.item())
        metrics = mean_metrics(history)
        metrics["gradient_steps"] = gradient_steps
        return metrics
