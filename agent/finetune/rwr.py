"""DRWR: reward-weighted regression of a policy on its own rollouts (on-policy), for any policy with a BC loss.

Each iteration: the discounted return-to-go of every step of the episodes that
start and end inside the rollout, standardized over the iteration; weights
w = min(exp(beta * R), max_reward_weight); then `update_epochs` passes of the
policy's behaviour-cloning loss (diffusion: the DDPM loss; flow: the velocity loss) of
the collected chunks weighted by w, in minibatches of `batch_size` (a leftover smaller
batch is dropped). A diffusion policy fine-tunes every denoising step; exploration keeps
each step's std >= min_sampling_denoising_std.
"""

from dataclasses import dataclass

from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent
from agent.finetune.metrics import mean_metrics
from agent.finetune.returns import episode_returns_to_go
from agent.finetune.rollout import Rollout, flatten_steps, index_samples
from agent.finetune.settings import EpochSettings
from dppo.schema import setting
from model.rl.weighted_regression import exponential_weights, standardize

RETURN_EPS = 1e-3  # the reference standardizes DRWR returns with the population std + 1e-3


@dataclass
class RWRTrainSettings(EpochSettings):
    beta: float = setting("inverse temperature of the weights exp(beta * standardized return) (< 0: prefers the worst)")
    max_reward_weight: float = setting("the weights' upper clip", above=0)


class RWRAgent(FinetuneAgent):
    train_settings = RWRTrainSettings
    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.actor_optimizer = self.add_optimizer("actor", self.model.actor_parameters(), role="actor")

    def update(self, rollout: Rollout) -> dict:
        train = self.cfg.train
        returns, complete = episode_returns_to_go(rollout.rewards, rollout.ends, rollout.firsts, rollout.cut,
                                                  train.gamma)
        keep = complete.reshape(-1)
        n_samples = int(keep.sum())
        if n_samples == 0:
            return {"n_samples": 0}  # no episode both started and ended in this rollout
        obs = index_samples(flatten_steps(rollout.obs), keep)
        actions = flatten_steps(rollout.actions)[keep]
        weights = exponential_weights(standardize(returns.reshape(-1)[keep], RETURN_EPS, unbiased=False), train.beta,
                                      train.max_reward_weight)
        history = {"loss": []}
        world = self.rank.world_size
        batch_size = min(train.batch_size, n_samples // world * world)  # splits evenly over the ranks
        if batch_size == 0:
            return {"n_samples": n_samples}
        for _ in range(train.update_epochs):
            for idx in self.shared_randperm(n_samples).split(batch_size)[: n_samples // batch_size]:
                idx = self.rank_share(idx)
                with self.autocast():
                    loss = (self.model.per_sample_bc_loss(actions[idx], index_samples(obs, idx)) * weights[idx]).mean()
                self.actor_optimizer.zero_grad()
                loss.backward()
                self.actor_step(self.actor_optimizer)
                history["loss"].append(loss.item())
        metrics = mean_metrics(history)
        metrics.update({"n_samples": n_samples, "weight_mean": weights.mean().item(),
                        "weight_max": weights.max().item()})
        return metrics
