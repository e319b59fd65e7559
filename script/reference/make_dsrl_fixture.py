"""Reference numbers of one DSRL gradient step: tests/data/reference_dsrl.pt (see README.md, "DSRL").

- "sac": Stable-Baselines3's SAC (installed; shaped as github ajwagen/dsrl builds it, sb3_dsrl_sac.py), one
  `train(gradient_steps=1)` on a fixed batch: its losses, entropy coefficient and the weights after the step.
- "na": DSRL-NA, the `train` and `update_noise_critic` of the reference's SB3 fork (stable_baselines3/dsrl/dsrl.py)
  re-run step by step by `ReferenceNA` below on the same SB3 networks (the fork itself does not install beside
  Stable-Baselines3 2.9), with one gradient step and one noise-critic step on fixed batches: the action critic's TD
  targets, the noise critic's distillation targets, the losses and the weights after both steps. The frozen policy
  that decodes the noise is this project's DDIM sampler on a small random DiffusionMLP (saved in the fixture), as
  the fork calls whatever diffusion policy it is given.

    OMP_NUM_THREADS=1 python script/reference/make_dsrl_fixture.py --out tests/data/reference_dsrl.pt
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from sb3_dsrl_sac import dsrl_sac  # noqa: E402

from model.diffusion.diffusion import DiffusionModel  # noqa: E402
from model.diffusion.mlp import DiffusionMLP  # noqa: E402

# The toy task's shapes (tests/toy.py): the test runs the project's agent on it.
SETTINGS = {"obs_dim": 1, "horizon_steps": 2, "action_dim": 1, "mlp_dims": [16, 16, 16], "batch_size": 64,
            "action_magnitude": 1.5, "gamma": 0.99, "tau": 0.005, "lr": 3e-4, "target_entropy": 0.0,
            "denoising_steps": 10, "ddim_steps": 5, "policy_mlp_dims": [16, 16, 16], "seed": 7}


def fixed_batch(generator: torch.Generator) -> dict:
    """A replay batch: obs, next_obs (B, obs_dim); noise u in [-1, 1] and executed chunk (B, Ta * Da); rewards,
    dones (B,), about a tenth of them terminal."""
    s = SETTINGS
    size, dim = s["batch_size"], s["horizon_steps"] * s["action_dim"]
    return {"obs": torch.randn(size, s["obs_dim"], generator=generator),
            "next_obs": torch.randn(size, s["obs_dim"], generator=generator),
            "noise": torch.rand(size, dim, generator=generator) * 2 - 1,
            "chunks": torch.rand(size, dim, generator=generator) * 2 - 1,
            "rewards": torch.randn(size, generator=generator),
            "dones": (torch.rand(size, generator=generator) < 0.1).float()}


def replay_samples(batch: dict, actions: torch.Tensor) -> ReplayBufferSamples:
    return ReplayBufferSamples(observations=batch["obs"], actions=actions, next_observations=batch["next_obs"],
                               dones=batch["dones"][:, None], rewards=batch["rewards"][:, None], discounts=None)


class FixedReplay:
    """Stands in for SB3's replay buffer: `sample` returns the given batches in order."""

    def __init__(self, *samples: ReplayBufferSamples):
        self.samples = list(samples)

    def sample(self, batch_size, env=None):
        return self.samples.pop(0)


def sac_state(model) -> dict:
    """Actor, critic, target critic and log entropy coefficient of an SB3 SAC, detached copies."""
    policy = model.policy
    return {"actor": clone_state(policy.actor), "critic": clone_state(policy.critic),
            "critic_target": clone_state(policy.critic_target), "log_ent_coef": model.log_ent_coef.detach().clone()}


def clone_state(module) -> dict:
    return {key: value.detach().clone() for key, value in module.state_dict().items() if not key.startswith("q_net")}


def sac_case(batch: dict) -> dict:
    """One SB3 SAC gradient step on the batch (critics on the noise u, as DSRL-SAC)."""
    s = SETTINGS
    torch.manual_seed(s["seed"])
    model = dsrl_sac(s["obs_dim"], s["horizon_steps"] * s["action_dim"], s["mlp_dims"], s["batch_size"],
                     s["action_magnitude"], s["lr"], s["tau"], s["gamma"], s["target_entropy"])
    before = sac_state(model)
    model.replay_buffer = FixedReplay(replay_samples(batch, batch["noise"]))
    torch.manual_seed(s["seed"] + 1)
    model.train(gradient_steps=1, batch_size=s["batch_size"])
    logged = model.logger.name_to_value
    return {"before": before, "after": sac_state(model), "seed": s["seed"] + 1,
            **{key: float(logged[f"train/{key}"]) for key in ("critic_loss", "actor_loss", "ent_coef_loss", "ent_coef")}}


class ReferenceNA:
    """DSRL-NA's update as the reference's `DSRL.train` / `update_noise_critic` compute it, on SB3 networks: the
    actor, action critic Q^A (on flattened chunks) and its target of one SAC model, the noise critic Q^W of a second.
    `decode(obs (B, obs_dim), w (B, Ta, Da)) -> (B, Ta, Da)` is the frozen policy."""

    def __init__(self, model, noise_critic, decode, chunk_shape: tuple[int, int]):
        self.model = model
        self.noise_critic = noise_critic
        self.decode = decode
        self.chunk_shape = chunk_shape
        self.record = {}

    def gradient_step(self, data: ReplayBufferSamples) -> None:
        model, policy = self.model, self.model.policy
        actor, critic, critic_target = policy.actor, policy.critic, policy.critic_target
        actions_pi, log_prob = actor.action_log_prob(data.observations)
        log_prob = log_prob.reshape(-1, 1)
        ent_coef = torch.exp(model.log_ent_coef.detach())
        ent_coef_loss = -(model.log_ent_coef * (log_prob + model.target_entropy).detach()).mean()
        model.ent_coef_optimizer.zero_grad()
        ent_coef_loss.backward()
        model.ent_coef_optimizer.step()
        with torch.no_grad():
            next_actions, next_log_prob = actor.action_log_prob(data.next_observations)
            next_noise = torch.tensor(policy.unscale_action(next_actions.cpu().numpy()))
            next_chunks = self.decode(data.next_observations, next_noise.reshape(-1, *self.chunk_shape))
            next_chunks = next_chunks.reshape(next_chunks.shape[0], -1)
            next_q = torch.cat(critic_target(data.next_observations, next_chunks), dim=1)
            next_q = torch.min(next_q, dim=1, keepdim=True).values - ent_coef * next_log_prob.reshape(-1, 1)
            targets = data.rewards + (1 - data.dones) * model.gamma * next_q
        current_q = critic(data.observations, data.actions)
        critic_loss = 0.5 * sum(F.mse_loss(q, targets) for q in current_q)
        critic.optimizer.zero_grad()
        critic_loss.backward()
        critic.optimizer.step()
        q_pi = torch.cat(self.noise_critic(data.observations, actions_pi), dim=1)
        actor_loss = (ent_coef * log_prob - torch.min(q_pi, dim=1, keepdim=True).values).mean()
        actor.optimizer.zero_grad()
        actor_loss.backward()
        actor.optimizer.step()
        polyak_update(critic.parameters(), critic_target.parameters(), model.tau)
        self.record.update({"td_targets": targets.squeeze(1), "critic_loss": critic_loss.item(),
                            "actor_loss": actor_loss.item(), "ent_coef_loss": ent_coef_loss.item()})

    def noise_critic_step(self, data: ReplayBufferSamples) -> None:
        with torch.no_grad():
            noise = torch.randn(data.actions.shape[0], *self.chunk_shape)
            chunks = self.decode(data.observations, noise).reshape(noise.shape[0], -1)
            q_chunks = self.model.policy.critic(data.observations, chunks)
        scaled = torch.tensor(self.model.policy.scale_action(noise.reshape(noise.shape[0], -1).numpy()))
        q_noise = self.noise_critic(data.observations, scaled)
        loss = sum(0.5 * F.mse_loss(target.detach(), q) for target, q in zip(q_chunks, q_noise))
        self.noise_critic.optimizer.zero_grad()
        loss.backward()
        self.noise_critic.optimizer.step()
        self.record.update({"distillation_targets": torch.cat(q_chunks, dim=1).T.clone(),
                            "noise_critic_loss": loss.item()})


def frozen_policy() -> DiffusionModel:
    """The decoder: DDIM, deterministic (eta 0), x0 clipped to +-1, on a random DiffusionMLP."""
    s = SETTINGS
    network = DiffusionMLP(action_dim=s["action_dim"], horizon_steps=s["horizon_steps"], cond_dim=s["obs_dim"],
                           mlp_dims=s["policy_mlp_dims"])
    return DiffusionModel(network, horizon_steps=s["horizon_steps"], obs_dim=s["obs_dim"], action_dim=s["action_dim"],
                          denoising_steps=s["denoising_steps"], use_ddim=True, ddim_steps=s["ddim_steps"],
                          final_action_clip_value=None)


def na_case(batch: dict, noise_batch: dict) -> dict:
    s = SETTINGS
    dim, chunk_shape = s["horizon_steps"] * s["action_dim"], (s["horizon_steps"], s["action_dim"])
    torch.manual_seed(s["seed"] + 2)
    policy = frozen_policy()
    model = dsrl_sac(s["obs_dim"], dim, s["mlp_dims"], s["batch_size"], s["action_magnitude"], s["lr"], s["tau"],
                     s["gamma"], s["target_entropy"])
    noise_critic = dsrl_sac(s["obs_dim"], dim, s["mlp_dims"], s["batch_size"], s["action_magnitude"], s["lr"]).critic

    def decode(obs, noise):
        return policy.act({"state": obs[:, None]}, noise=noise)

    reference = ReferenceNA(model, noise_critic, decode, chunk_shape)
    before = sac_state(model) | {"noise_critic": clone_state(noise_critic)}
    torch.manual_seed(s["seed"] + 3)
    reference.gradient_step(replay_samples(batch, batch["chunks"]))
    reference.noise_critic_step(replay_samples(noise_batch, noise_batch["chunks"]))
    after = sac_state(model) | {"noise_critic": clone_state(noise_critic)}
    return {"before": before, "after": after, "seed": s["seed"] + 3, "policy_network": clone_state(policy.network),
            **reference.record}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/data/reference_dsrl.pt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(SETTINGS["seed"])
    batch, noise_batch = fixed_batch(generator), fixed_batch(generator)
    fixture = {"settings": SETTINGS, "batch": batch, "noise_batch": noise_batch, "sac": sac_case(batch),
               "na": na_case(batch, noise_batch),
               "versions": {"torch": str(torch.__version__), "numpy": np.__version__,
                            "stable_baselines3": __import__("stable_baselines3").__version__}}
    torch.save(fixture, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
