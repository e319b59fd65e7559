"""PPO fine-tuning: DPPO (model PPODiffusion), Gaussian PPO (PPOGaussian) and ReinFlow-style flow PPO (PPOFlow).

Each iteration: GAE over the rollout's environment steps (one step = one chunk,
rewards summed, gamma per chunk) with V(s); then `update_epochs` passes of PPO
over minibatches of environment samples. For DPPO each sample carries its K'
denoising steps (what `explore` stored: the chain), so one sample gives K'
PPO terms. The model supplies `log_probs(cond, stored)` and `loss(...)`; the
clipped-PPO pieces they use live once in model/rl/ppo.py. With `train.augment_pad` (pixel tasks)
the rollout's images are randomly shifted once before the update, as the reference does, so old and
new log-probabilities see the same augmented images.
"""

import torch
from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent, explained_variance, mean_metrics
from agent.finetune.returns import gae_from_critic
from agent.finetune.rollout import Rollout, flatten_steps, index_samples, map_batches
from dppo.config import require
from model.common.obs_encoder import shift_images


class PPOAgent(FinetuneAgent):
    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        train = cfg.train
        n_samples = train.n_steps * self.n_envs
        require(train.batch_size <= n_samples,
                f"train.batch_size={train.batch_size} exceeds the {n_samples} samples of an iteration "
                f"(env.n_envs * train.n_steps): lower train.batch_size or raise train.n_steps.")
        self.actor_optimizer = self.add_optimizer("actor", self.model.actor_parameters(), role="actor")
        self.critic_optimizer = self.add_optimizer("critic", self.model.critic.parameters(), role="critic")
        self.start()

    def update(self, rollout: Rollout) -> dict:
        train, model = self.cfg.train, self.model
        rollout_obs = rollout.obs
        if train.get("augment_pad") and "rgb" in rollout_obs:
            rollout_obs = {**rollout_obs, "rgb": shift_images(rollout_obs["rgb"], train.augment_pad)}
        advantages, values = gae_from_critic(model.critic, rollout_obs, rollout.next_obs, rollout.scaled_rewards,
                                             rollout.terminated, rollout.ends, train.gamma, train.gae_lambda,
                                             train.batch_size)
        returns = (advantages + values).reshape(-1)
        advantages, values = advantages.reshape(-1), values.reshape(-1)
        obs, stored = flatten_steps(rollout_obs), flatten_steps(rollout.stored)
        n_samples = returns.shape[0]
        old_log_probs = map_batches(lambda idx: model.log_probs(index_samples(obs, idx), index_samples(stored, idx)),
                                    n_samples, train.batch_size, self.device)

        # ---- PPO epochs over minibatches of environment samples; a leftover smaller batch is dropped ----
        history = {key: [] for key in ("loss", "pg_loss", "value_loss", "bc_loss", "entropy_loss", "approx_kl",
                                       "clipfrac", "ratio")}
        n_minibatches = n_samples // train.batch_size
        for _ in range(train.update_epochs):
            stop = False
            for idx in torch.randperm(n_samples, device=self.device).split(train.batch_size)[:n_minibatches]:
                out = model.loss(index_samples(obs, idx), index_samples(stored, idx), returns[idx], values[idx],
                                 advantages[idx], old_log_probs[idx], use_bc_loss=train.use_bc_loss)
                loss = (out.pg_loss + train.vf_coef * out.v_loss + train.bc_coef * out.bc_loss
                        + train.ent_coef * out.entropy_loss)
                self.actor_optimizer.zero_grad()
                self.critic_optimizer.zero_grad()
                loss.backward()
                self.actor_step(self.actor_optimizer)
                self.critic_optimizer.step()
                for key, value in (("loss", loss.item()), ("pg_loss", out.pg_loss.item()),
                                   ("value_loss", out.v_loss.item()), ("bc_loss", out.bc_loss.item()),
                                   ("entropy_loss", out.entropy_loss.item()),
                                   ("approx_kl", out.approx_kl), ("clipfrac", out.clipfrac), ("ratio", out.ratio)):
                    history[key].append(value)
                if train.target_kl is not None and out.approx_kl > train.target_kl:
                    stop = True
                    break
            if stop:
                break
        metrics = mean_metrics(history)
        metrics["explained_variance"] = explained_variance(values, returns)
        metrics["minibatch_updates"] = len(history["loss"])
        return metrics
