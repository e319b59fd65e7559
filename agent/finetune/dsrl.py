"""DSRL: SAC in the noise space of a frozen diffusion or flow policy (model/rl/dsrl.py), from replay.

The first `init_rollout_steps` chunk-steps per env act as the BC policy does (w ~ N(0, I)) and only fill the
replay. Then every iteration explores with the noise actor and makes n_steps / train_freq rounds of `utd`
gradient steps (and, for DSRL-NA, `noise_critic_grad_steps` steps of the noise critic after each round), each
step on a fresh replayed batch:

- the actor draws u ~ pi(s) (graph kept), then u' ~ pi(s') without a graph (targets), as Stable-Baselines3 draws
  them, one after the other (one pass over [s; s'] would spend the backward pass's products on the s' rows too);
- the critics step on their soft TD loss (alpha before this step's temperature update);
- the actor steps on alpha log pi - min Q(s, u) under the updated critics, the temperature on its own loss,
  one backward pass and one optimizer for both (Adam is per parameter: the same as two optimizers);
- the target critics move by Polyak averaging (tau).

`train.variant`: `sac` (critics on the noise) or `na` (noise aliasing: critics on the executed chunk, a noise
critic distilled from them, which the actor maximizes). The replay keeps both the chunk and the noise.
In an update the frozen policy decodes in the run's precision (`decode`); DSRL's own small networks run in float32.
"""

import copy
from dataclasses import dataclass

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from agent.finetune.base import FinetuneAgent
from agent.finetune.rollout import Rollout
from agent.finetune.settings import ReplaySettings, TargetNetworkSettings
from dppo.checkpoint import load_state_dict_checked
from dppo.config import require
from dppo.schema import setting
from model.common.critic import soft_update
from model.rl.dsrl import (
    EntropyTemperature,
    NoiseSteering,
    actor_loss,
    critic_regression_loss,
    soft_td_targets,
)

VARIANTS = ("sac", "na")


@dataclass
class DSRLTrainSettings(ReplaySettings, TargetNetworkSettings):
    variant: str = setting("na: noise aliasing (critics on the executed chunk), sac: critics on the noise",
                           choices=VARIANTS)
    train_freq: int = setting("chunk-steps per env between rounds of gradient steps", low=1)
    utd: int = setting("gradient steps per round (update-to-data)", low=1)
    noise_critic_grad_steps: int = setting("noise-critic steps after each round (DSRL-NA)", low=0)
    init_rollout_steps: int = setting("chunk-steps per env of the BC policy (unit-normal noise) before learning", low=0)
    action_magnitude: float = setting("the noise actor's output bound: tanh scaled to +-action_magnitude", above=0)
    initial_temperature: float = setting("the entropy coefficient's start (learned)", above=0)
    target_entropy: float = setting("SAC's target entropy of the noise actor")


class DSRLAgent(FinetuneAgent):
    off_policy = True
    train_settings = DSRLTrainSettings
    reads_stored = True  # the noise each chunk was decoded from

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        train = cfg.train
        require(train.n_steps % train.train_freq == 0,
                f"train.n_steps={train.n_steps} is not a multiple of train.train_freq={train.train_freq}: make it one.")
        self.model.requires_grad_(False)  # the BC policy stays frozen
        self.variant = train.variant
        self.noise_actor = hydra.utils.instantiate(cfg.noise_actor).to(self.device)
        self.temperature = EntropyTemperature(train.initial_temperature, train.target_entropy).to(self.device)
        self.steering = noise_steering(self.model, self.noise_actor, cfg)
        noise_dim = cfg.horizon_steps * cfg.action_dim
        critic_x_dim = noise_dim if self.variant == "sac" else cfg.act_steps * cfg.action_dim
        self.critic = self.build_critic("critic", x_dim=critic_x_dim)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        if self.variant == "na":
            self.noise_critic = self.build_critic("critic", x_dim=noise_dim)
            self.noise_critic_optimizer = self.add_optimizer("noise_critic", self.noise_critic.parameters(),
                                                             role="critic")
        self.actor_optimizer = self.add_optimizer(
            "actor", [*self.noise_actor.parameters(), *self.temperature.parameters()], role="actor")
        self.critic_optimizer = self.add_optimizer("critic", self.critic.parameters(), role="critic")

    @classmethod
    def evaluation_actor(cls, policy, cfg: DictConfig, modules: dict, device: str) -> NoiseSteering:
        """The checkpoint's policy steered by its noise actor, as in training."""
        actor = hydra.utils.instantiate(cfg.noise_actor).to(device)
        load_state_dict_checked(actor, modules["noise_actor"], what="noise_actor")
        return noise_steering(policy, actor.eval(), cfg)

    @property
    def actor_critic(self) -> nn.Module:
        """The critic whose Q(s, u) the actor maximizes: the noise critic (NA), or the critic itself (SAC)."""
        return self.noise_critic if self.variant == "na" else self.critic

    @property
    def collecting_base_steps(self) -> bool:
        """Whether this iteration acts as the BC policy does: its first chunk-step comes before init_rollout_steps."""
        return self.itr * self.cfg.train.n_steps < self.cfg.train.init_rollout_steps

    def step_lr_schedulers(self) -> None:
        """The schedules start with learning, after the BC policy's iterations."""
        if not self.collecting_base_steps:
            super().step_lr_schedulers()

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        if self.collecting_base_steps:
            return self.steering.base_explore(cond)
        return self.steering.explore(cond)

    def act(self, cond: dict) -> torch.Tensor:
        return self.steering.act(cond)

    def update(self, rollout: Rollout) -> dict:
        train = self.cfg.train
        if self.collecting_base_steps:
            return {"gradient_steps": 0}
        history = []
        for _ in range(rollout.n_steps // train.train_freq):
            history += [self.gradient_step(self.replay_sample(train.batch_size)) for _ in range(train.utd)]
            if self.variant == "na":
                history += [self.noise_critic_step(self.replay_sample(train.batch_size))
                            for _ in range(train.noise_critic_grad_steps)]
        keys = dict.fromkeys(key for step in history for key in step)  # in order of first appearance
        metrics = {key: torch.stack([step[key] for step in history if key in step]).mean().item() for key in keys}
        metrics["gradient_steps"] = sum("critic_loss" in step for step in history)
        return metrics

    def critic_input(self, batch: dict) -> torch.Tensor:
        """What the critics see of a replayed step: the noise u (B, Ta, Da) (SAC) or the executed chunk (NA)."""
        if self.variant == "sac":
            return batch["stored"]["noise"]
        return batch["actions"][:, : self.act_steps]

    def decode(self, cond: dict, u: torch.Tensor) -> torch.Tensor:
        """The frozen policy's chunks (B, Ta, Da), float32, decoded from the noise u (B, Ta * Da) in the run's
        precision: the 512-wide denoiser gains from bf16, DSRL's own 128-wide networks run in float32 (a DSRL-SAC
        step took 26.4 ms in bf16 against 21.6 ms in float32, docs/PERFORMANCE.md)."""
        with torch.no_grad(), self.autocast():
            return self.steering.decode(cond, u).float()

    def gradient_step(self, batch: dict) -> dict:
        """One SAC step on a replayed batch: obs / next_obs {key: (B, To, ...)}, actions (B, Ta, Da), stored
        {"noise": (B, Ta, Da)}, rewards (B,), terminated (B,) bool. Returns detached 0-dim metrics."""
        train = self.cfg.train
        obs, next_obs = batch["obs"], batch["next_obs"]
        alpha = self.temperature.alpha()
        u, log_prob = self.noise_actor.sample(obs)
        with torch.no_grad():
            next_u, next_log_prob = self.noise_actor.sample(next_obs)
        next_x = next_u if self.variant == "sac" else self.decode(next_obs, next_u)[:, : self.act_steps]
        with torch.no_grad():
            targets = soft_td_targets(self.critic_target(next_obs, next_x), next_log_prob, batch["rewards"],
                                      batch["terminated"], train.gamma, alpha)
        q = self.critic(obs, self.critic_input(batch))
        critic_loss = critic_regression_loss(q, targets)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.optimizer_step(self.critic_optimizer)

        loss = actor_loss(self.actor_critic(obs, u), log_prob, alpha)
        temperature_loss = self.temperature.loss(log_prob)
        self.actor_optimizer.zero_grad()
        (loss + temperature_loss).backward(inputs=self.actor_optimizer.param_groups[0]["params"])
        self.actor_step(self.actor_optimizer)
        soft_update(self.critic_target, self.critic, train.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": loss.detach(),
                "temperature_loss": temperature_loss.detach(), "temperature": alpha, "q": q.detach().mean(),
                "entropy": -log_prob.detach().mean()}

    def noise_critic_step(self, batch: dict) -> dict:
        """DSRL-NA: fit Q^W_i(s, u) to Q^A_i(s, decode(s, w)) for fresh w ~ N(0, I) (B, Ta, Da), u = w / magnitude,
        on the replayed states of `batch`."""
        obs = batch["obs"]
        w = torch.randn(batch["rewards"].shape[0], *self.steering.noise_shape, device=self.device)
        u = (w / self.steering.action_magnitude).flatten(1)
        chunks = self.decode(obs, u)
        with torch.no_grad():
            targets = self.critic(obs, chunks[:, : self.act_steps])  # (n, B): Q^A_i for Q^W_i
        loss = critic_regression_loss(self.noise_critic(obs, u), targets)
        self.noise_critic_optimizer.zero_grad()
        loss.backward()
        self.optimizer_step(self.noise_critic_optimizer)
        return {"noise_critic_loss": loss.detach()}


def noise_steering(policy, actor, cfg: DictConfig) -> NoiseSteering:
    """DSRL-SAC clips the BC policy's noise of the first steps to the actor's range, as the reference; NA keeps it."""
    return NoiseSteering(policy, actor, cfg.train.action_magnitude, clip_base_noise=cfg.train.variant == "sac")
