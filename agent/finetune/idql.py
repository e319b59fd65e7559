"""IDQL: implicit diffusion Q-learning from replay (model/diffusion/diffusion_idql.py).

Each iteration the rollout joins the replay buffer (rewards scaled by
`reward_scale_const`); then G = new samples / batch_size * replay_ratio steps,
each on a fresh replayed batch: V by expectile regression, Q by TD to V(s'),
the target Q by Polyak averaging (rate `critic_tau`), and the actor by the plain
diffusion loss of the replayed chunks (after `n_critic_warmup_itr` iterations).
Acting draws candidates and picks by the critics (see the model).
"""

from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent, mean_metrics
from agent.finetune.replay import replay_gradient_steps
from agent.finetune.rollout import Rollout


class IDQLAgent(FinetuneAgent):
    off_policy = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.actor_optimizer = self.add_optimizer("actor", self.model.network.parameters(), role="actor")
        self.critic_v_optimizer = self.add_optimizer("critic_v", self.model.critic_v.parameters(), role="critic")
        self.critic_q_optimizer = self.add_optimizer("critic_q", self.model.critic_q.parameters(), role="critic")
        self.start()

    def update(self, rollout: Rollout) -> dict:
        train, model = self.cfg.train, self.model
        gradient_steps = replay_gradient_steps(rollout.n_steps * rollout.n_envs, train.batch_size, train.replay_ratio)
        history = {"v_loss": [], "q_loss": [], "actor_loss": []}
        for _ in range(gradient_steps):
            batch = self.replay.sample(train.batch_size)
            v_loss = model.v_loss(batch["obs"], batch["actions"])
            self.critic_v_optimizer.zero_grad()
            v_loss.backward()
            self.critic_v_optimizer.step()

            q_loss = model.q_loss(batch["obs"], batch["next_obs"], batch["actions"], batch["rewards"],
                                  batch["terminated"], train.gamma)
            self.critic_q_optimizer.zero_grad()
            q_loss.backward()
            self.critic_q_optimizer.step()
            model.update_target(train.critic_tau)
            history["v_loss"].append(v_loss.item())
            history["q_loss"].append(q_loss.item())

            if self.update_actor:
                actor_loss = model.loss(batch["actions"], batch["obs"])
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_step(self.actor_optimizer)
                history["actor_loss"].append(actor_loss.item())
        metrics = mean_metrics(history)
        metrics["gradient_steps"] = gradient_steps
        return metrics
