"""DQL: diffusion Q-learning from replay (model/diffusion/diffusion_dql.py).

Each iteration the rollout joins the replay buffer (rewards scaled by
`reward_scale_const`); then G = new samples / batch_size * replay_ratio steps,
each on a fresh replayed batch: one critic step (double-Q TD), one actor step
(BC + eta * normalized Q through the differentiable denoising chain; skipped
during the `n_critic_warmup_itr` first iterations), one Polyak target update.
"""

from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent, mean_metrics
from agent.finetune.replay import replay_gradient_steps
from agent.finetune.rollout import Rollout


class DQLAgent(FinetuneAgent):
    off_policy = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.actor_optimizer = self.add_optimizer("actor", self.model.network.parameters(), role="actor")
        self.critic_optimizer = self.add_optimizer("critic", self.model.critic.parameters(), role="critic")
        self.start()

    def update(self, rollout: Rollout) -> dict:
        train, model = self.cfg.train, self.model
        gradient_steps = replay_gradient_steps(rollout.n_steps * rollout.n_envs, train.batch_size, train.replay_ratio)
        history = {"critic_loss": [], "actor_loss": [], "bc_loss": [], "q_loss": []}
        for _ in range(gradient_steps):
            batch = self.replay.sample(train.batch_size)
            critic_loss = model.critic_loss(batch["obs"], batch["next_obs"], batch["actions"], batch["rewards"],
                                            batch["terminated"], train.gamma)
            self.critic_optimizer.zero_grad()
            critic_loss.backward()
            self.critic_optimizer.step()
            history["critic_loss"].append(critic_loss.item())

            if self.update_actor:
                actor_loss, terms = model.actor_loss(batch["obs"], batch["actions"], train.eta)
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_step(self.actor_optimizer)
                history["actor_loss"].append(actor_loss.item())
                for key, value in terms.items():
                    history[key].append(value)
            model.update_target(train.target_ema_rate)
        metrics = mean_metrics(history)
        metrics["gradient_steps"] = gradient_steps
        return metrics
