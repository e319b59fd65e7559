"""PPO fine-tuning of any FinetunePolicy: DPPO (diffusion), Gaussian PPO, flow PPO and ReinFlow.

Each iteration: GAE over the rollout's environment steps (one step = one chunk,
rewards summed, gamma per chunk) with V(s); then `update_epochs` passes of PPO
over minibatches of environment samples. For DPPO each sample carries its K'
denoising steps (what `explore` stored: the chain), so one sample gives K'
PPO terms. The loss is model/rl/ppo.py's, written against the policy surface. The old
log-probabilities are those `explore` kept (stored["log_probs"]), else recomputed after the
rollout (always under `precision=bf16`, whose forward passes run under bf16 autocast: old and new
log-probabilities then come from the same computation). With `train.augment_pad` (pixel tasks) the
rollout's images are randomly shifted once before the update, as the reference does, so old and new
log-probabilities see the same images.
Cut steps (worker restarts, simulator failures) are no samples and no bootstrap.
"""

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent
from agent.finetune.metrics import explained_variance, mean_metrics
from agent.finetune.returns import gae_from_critic, segment_ends
from agent.finetune.rollout import Rollout, flatten_steps, index_samples, map_batches
from agent.finetune.settings import EpochSettings
from dppo.config import require
from dppo.distributed import mean_metrics_over_ranks
from dppo.schema import setting
from model.common.obs_encoder import shift_images
from model.rl.ppo import PPOSettings, normalize_advantages, ppo_loss

METRIC_KEYS = ("loss", "pg_loss", "value_loss", "bc_loss", "entropy_loss", "approx_kl", "clipfrac", "ratio")


@dataclass
class PPOTrainSettings(EpochSettings):
    gae_lambda: float = setting("GAE lambda over chunk-steps", low=0, high=1)
    augment_pad: int | None = setting("pixel tasks: shift each rollout image once by up to this many pixels", low=1)
    vf_coef: float = setting("value loss weight", low=0)
    target_kl: float | None = setting("stop the epochs when approx_kl exceeds this (null: never)", above=0)
    clip_ploss_coef: float = setting("PPO clip coefficient of the term that outputs the action", above=0)
    clip_ploss_coef_base: float = setting("PPO clip coefficient of the noisiest denoising step", above=0)
    clip_ploss_coef_rate: float = setting("rate of the exponential from the base clip to the last", above=0)
    gamma_denoising: float = setting("advantage discount per denoising step from the action", low=0, high=1)
    clip_vloss_coef: float | None = setting("value clip around the old values (null: none)", above=0)
    norm_adv: bool = setting("normalize advantages per minibatch")
    clip_advantage_lower_quantile: float = setting("clip advantages below this quantile", low=0, high=1)
    clip_advantage_upper_quantile: float = setting("clip advantages above this quantile", low=0, high=1)
    use_bc_loss: bool = setting("add the BC loss on the frozen policy's chains (diffusion)")
    bc_coef: float = setting("BC loss weight", low=0)
    ent_coef: float = setting("entropy bonus weight (policies with a learned std)", low=0)
    grad_chunk_size: int | None = setting("samples per gradient-accumulation chunk (null: whole minibatch)", low=1)


class PPOAgent(FinetuneAgent):
    reads_stored = True  # the chains (or chunks) and their log-probabilities
    train_settings = PPOTrainSettings

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        train = cfg.train
        n_samples = train.n_steps * self.n_envs
        require(train.batch_size <= n_samples,
                f"train.batch_size={train.batch_size} exceeds the {n_samples} samples of an iteration "
                f"(env.n_envs * train.n_steps): lower train.batch_size or raise train.n_steps.")
        require(train.ent_coef == 0 or self.model.has_entropy,
                f"train.ent_coef={train.ent_coef} has no effect on {type(self.model).__name__}: its entropy does not "
                "depend on the weights (no learned std); set train.ent_coef=0.")
        require(not train.use_bc_loss or self.model.has_bc_reference,
                f"train.use_bc_loss needs a policy with a frozen pre-trained copy (diffusion); "
                f"{type(self.model).__name__} has none: set train.use_bc_loss=false.")
        self.settings = PPOSettings(**{key: train[key] for key in PPOSettings.__dataclass_fields__})  # every one set
        self.critic = self.build_critic("critic")
        self.actor_optimizer = self.add_optimizer("actor", self.model.actor_parameters(), role="actor")
        self.critic_optimizer = self.add_optimizer("critic", self.critic.parameters(), role="critic")

    def update(self, rollout: Rollout) -> dict:
        train, model = self.cfg.train, self.model
        rollout_obs = rollout.obs
        shift = bool(train.get("augment_pad")) and "rgb" in rollout_obs
        if shift:
            rollout_obs = {**rollout_obs, "rgb": shift_images(rollout_obs["rgb"], train.augment_pad)}
        breaks = segment_ends(rollout.ends, rollout.firsts, rollout.cut)
        with self.autocast():
            advantages, values = gae_from_critic(self.critic, rollout_obs, rollout.next_obs, rollout.scaled_rewards,
                                                 rollout.terminated, breaks, train.gamma, train.gae_lambda,
                                                 train.batch_size)
        keep = ~rollout.cut.reshape(-1)  # cut steps never happened: no sample
        returns = (advantages + values).reshape(-1)[keep]
        advantages, values = advantages.reshape(-1)[keep], values.reshape(-1)[keep]
        obs = index_samples(flatten_steps(rollout_obs), keep)
        stored = index_samples(flatten_steps(rollout.stored), keep)
        n_samples = returns.shape[0]
        if "log_probs" in stored and not shift and self.precision == "fp32":  # what the policy computed sampling
            old_log_probs = stored["log_probs"]
        else:  # recomputed where the new log-probs would not match them: after the images were shifted, and under
            # bf16, whose log-probs differ from the float32 sampler's by up to ~1e-2 (more than the clip); computed
            # on the loss's own path, a fresh minibatch has ratio 1 (log-probs are row-wise, whatever the batch)
            with self.autocast():
                old_log_probs = map_batches(
                    lambda idx: model.log_probs(index_samples(obs, idx), index_samples(stored, idx)),
                    n_samples, train.batch_size, self.device)

        # ---- PPO epochs over minibatches of environment samples; a leftover smaller batch is dropped ----
        history = {key: [] for key in METRIC_KEYS}
        n_minibatches = n_samples // train.batch_size
        for _ in range(train.update_epochs):
            stop = False
            for idx in self.shared_randperm(n_samples).split(train.batch_size)[:n_minibatches]:
                # advantages normalized over the whole minibatch, then each rank computes the loss on its share
                minibatch_advantages = self.rank_share(normalize_advantages(advantages[idx], self.settings))
                idx = self.rank_share(idx)
                step_metrics = self.minibatch_update(index_samples(obs, idx), index_samples(stored, idx), returns[idx],
                                                     values[idx], minibatch_advantages, old_log_probs[idx])
                step_metrics = mean_metrics_over_ranks(step_metrics, self.rank)  # one target-KL decision
                for key, value in step_metrics.items():
                    history[key].append(value)
                if train.target_kl is not None and step_metrics["approx_kl"] > train.target_kl:
                    stop = True
                    break
            if stop:
                break
        metrics = mean_metrics(history)
        metrics["explained_variance"] = explained_variance(values, returns)
        metrics["minibatch_updates"] = len(history["loss"])
        return metrics

    def minibatch_update(self, obs: dict, stored: dict, returns: torch.Tensor, values: torch.Tensor,
                         advantages: torch.Tensor, old_log_probs: torch.Tensor) -> dict[str, float]:
        """One gradient step of actor and critic on a minibatch of B samples; returns its metrics (METRIC_KEYS).

        obs, stored: {key: (B, ...)}; returns, values, advantages: (B,) (normalized over the global minibatch);
        old_log_probs: (B, ...) as `log_probs`. B is this rank's share of the minibatch; gradients are averaged over
        the ranks before the optimizer steps. With `train.grad_chunk_size` = C the loss is
        then evaluated on chunks of C samples, each backpropagated with weight C / B, so gradients accumulate to
        those of the whole minibatch while the activations held at once shrink to a chunk's.
        """
        train = self.cfg.train
        batch = returns.shape[0]
        self.actor_optimizer.zero_grad()
        self.critic_optimizer.zero_grad()
        totals = dict.fromkeys(METRIC_KEYS, 0.0)
        chunk_size = train.get("grad_chunk_size") or batch
        for start in range(0, batch, chunk_size):
            chunk = slice(start, start + chunk_size)
            weight = (min(start + chunk_size, batch) - start) / batch
            with self.autocast():
                out = ppo_loss(self.model, self.critic, index_samples(obs, chunk), index_samples(stored, chunk),
                               returns[chunk], values[chunk], advantages[chunk], old_log_probs[chunk], self.settings,
                               use_bc_loss=train.use_bc_loss)
                loss = (out.pg_loss + train.vf_coef * out.v_loss + train.bc_coef * out.bc_loss
                        + train.ent_coef * out.entropy_loss)
            (weight * loss).backward()
            for key, value in (("loss", loss.item()), ("pg_loss", out.pg_loss.item()),
                               ("value_loss", out.v_loss.item()), ("bc_loss", out.bc_loss.item()),
                               ("entropy_loss", out.entropy_loss.item()), ("approx_kl", out.approx_kl),
                               ("clipfrac", out.clipfrac), ("ratio", out.ratio)):
                totals[key] += weight * value
        self.actor_step(self.actor_optimizer)
        self.optimizer_step(self.critic_optimizer)
        return totals
