"""IDQL: implicit diffusion Q-learning from replay (model/rl/idql.py), for any policy.

Each iteration the rollout joins the replay buffer (rewards scaled by
`reward_scale_const`); then G = new samples / batch_size * replay_ratio steps,
each on a fresh replayed batch: V by expectile regression, Q by TD to V(s'),
the target Q by Polyak averaging (rate `critic_tau`), and the actor by the plain
BC loss of the replayed chunks (after `n_critic_warmup_itr` iterations).
The agent acts through a CandidateSelector: 20 candidates from the policy, chosen by the critics.
"""

import copy
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent
from agent.finetune.metrics import mean_metrics
from agent.finetune.replay import replay_gradient_steps
from agent.finetune.rollout import Rollout
from agent.finetune.settings import ReplayRatioSettings, TargetNetworkSettings
from dppo.checkpoint import load_state_dict_checked
from dppo.schema import setting
from model.common.critic import soft_update
from model.rl.idql import CandidateSelector, idql_q_loss, idql_v_loss


@dataclass
class IDQLTrainSettings(ReplayRatioSettings, TargetNetworkSettings):
    expectile: float = setting("expectile of V's regression on the target Q", above=0, high=1)
    num_sample: int = setting("candidate chunks when exploring", low=1)
    eval_num_sample: int = setting("candidate chunks when evaluating", low=1)
    exploration_weight: float = setting("exploring weight of a candidate with Q - V > 0 (1 - it elsewhere)",
                                        low=0, high=1)


class IDQLAgent(FinetuneAgent):
    off_policy = True
    train_settings = IDQLTrainSettings

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.critic_q = self.build_critic("critic_q")
        self.target_q = copy.deepcopy(self.critic_q).requires_grad_(False)
        self.critic_v = self.build_critic("critic_v")
        self.selector = candidate_selector(self.model, self.target_q, self.critic_v, cfg)
        self.actor_optimizer = self.add_optimizer("actor", self.model.actor_parameters(), role="actor")
        self.critic_v_optimizer = self.add_optimizer("critic_v", self.critic_v.parameters(), role="critic")
        self.critic_q_optimizer = self.add_optimizer("critic_q", self.critic_q.parameters(), role="critic")

    def explore(self, cond: dict):
        return self.selector.explore(cond)

    def act(self, cond: dict):
        return self.selector.act(cond)

    @classmethod
    def evaluation_actor(cls, policy, cfg: DictConfig, modules: dict, device: str):
        """The checkpoint's policy choosing among candidates with its critics, as in training."""
        target_q = hydra.utils.instantiate(cfg.critic_q).to(device)
        critic_v = hydra.utils.instantiate(cfg.critic_v).to(device)
        load_state_dict_checked(target_q, modules["target_q"], what="target_q")
        load_state_dict_checked(critic_v, modules["critic_v"], what="critic_v")
        return candidate_selector(policy, target_q.eval(), critic_v.eval(), cfg)

    def update(self, rollout: Rollout) -> dict:
        train, model = self.cfg.train, self.model
        gradient_steps = replay_gradient_steps(rollout.n_steps * rollout.n_envs, train.batch_size, train.replay_ratio)
        history = {"v_loss": [], "q_loss": [], "actor_loss": []}
        for _ in range(gradient_steps):
            batch = self.replay_sample(train.batch_size)
            with self.autocast():
                v_loss = idql_v_loss(self.critic_v, self.target_q, batch, train.expectile, self.act_steps)
            self.critic_v_optimizer.zero_grad()
            v_loss.backward()
            self.optimizer_step(self.critic_v_optimizer)

            with self.autocast():
                q_loss = idql_q_loss(self.critic_q, self.critic_v, batch, train.gamma, self.act_steps)
            self.critic_q_optimizer.zero_grad()
            q_loss.backward()
            self.optimizer_step(self.critic_q_optimizer)
            soft_update(self.target_q, self.critic_q, train.tau)
            history["v_loss"].append(v_loss.item())
            history["q_loss"].append(q_loss.item())

            if self.update_actor:
                with self.autocast():
                    actor_loss = model.bc_loss(batch["actions"], batch["obs"])
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_step(self.actor_optimizer)
                history["actor_loss"].append(actor_loss.item())
        metrics = mean_metrics(history)
        metrics["gradient_steps"] = gradient_steps
        return metrics


def candidate_selector(policy, target_q, critic_v, cfg: DictConfig) -> CandidateSelector:
    train = cfg.train
    return CandidateSelector(policy, target_q, critic_v, cfg.act_steps, num_sample=train.num_sample,
                             eval_num_sample=train.eval_num_sample, exploration_weight=train.exploration_weight)
