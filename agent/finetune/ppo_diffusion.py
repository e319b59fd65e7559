"""DPPO: PPO fine-tuning of a pre-trained diffusion policy over the two-layer MDP.

Each iteration: roll out n_steps action chunks in n_envs envs, keeping the chain
of the K' fine-tuned denoising steps; GAE over environment steps (one step = one
chunk, rewards summed, gamma per chunk) with V(s); then update_epochs of PPO
over minibatches of environment samples, each carrying its K' denoising steps.
"""

import numpy as np
import torch
from omegaconf import DictConfig

from agent.finetune.base import FinetuneAgent, Timer
from agent.finetune.episodes import summarize
from agent.finetune.returns import compute_gae
from dppo.schedulers import RunningRewardScaler, WarmupCosineLR


class PPODiffusionAgent(FinetuneAgent):
    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        train = cfg.train
        self.actor_optimizer = torch.optim.AdamW(self.model.actor_ft.parameters(), lr=train.actor_lr,
                                                 weight_decay=train.actor_weight_decay)
        self.critic_optimizer = torch.optim.AdamW(self.model.critic.parameters(), lr=train.critic_lr,
                                                  weight_decay=train.critic_weight_decay)
        self.actor_lr_scheduler = WarmupCosineLR(self.actor_optimizer, max_lr=train.actor_lr,
                                                 **train.actor_lr_scheduler)
        self.critic_lr_scheduler = WarmupCosineLR(self.critic_optimizer, max_lr=train.critic_lr,
                                                  **train.critic_lr_scheduler)
        self.reward_scaler = RunningRewardScaler(self.n_envs, gamma=train.gamma) if train.reward_scale_running else None
        self.start()

    def algorithm_state(self) -> dict:
        return {
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_lr_scheduler": self.actor_lr_scheduler.state_dict(),
            "critic_lr_scheduler": self.critic_lr_scheduler.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
        }

    def load_algorithm_state(self, state: dict) -> None:
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_lr_scheduler.load_state_dict(state["actor_lr_scheduler"])
        self.critic_lr_scheduler.load_state_dict(state["critic_lr_scheduler"])
        if self.reward_scaler:
            self.reward_scaler.load_state_dict(state["reward_scaler"])

    def run(self) -> None:
        cfg, train = self.cfg, self.cfg.train
        n_steps, n_envs, model = train.n_steps, self.n_envs, self.model
        obs = None
        if self.itr == 0:
            self.evaluate_and_log()  # the pre-trained policy
        while self.itr < train.n_train_itr:
            timer = Timer()
            if obs is None or train.reset_at_iteration:
                obs = self.reset_envs()

            # ---- rollout: n_steps chunk-steps in n_envs envs ----------------------------------
            obs_buffer = torch.zeros((n_steps, n_envs, *obs.shape[1:]), device=self.device)
            next_obs_buffer = torch.zeros_like(obs_buffer)
            chain_buffer = torch.zeros((n_steps, n_envs, model.ft_denoising_steps + 1, cfg.horizon_steps,
                                        cfg.action_dim), device=self.device)
            reward_buffer = torch.zeros((n_steps, n_envs), device=self.device)
            terminated_buffer = torch.zeros((n_steps, n_envs), dtype=torch.bool, device=self.device)
            ends_buffer = torch.zeros_like(terminated_buffer)
            episodes, env_steps, sim_errors = [], 0, 0
            for step in range(n_steps):
                with torch.no_grad():
                    sample = model.sample_with_chains({"state": obs}, deterministic=False)
                result = self.venv.step(sample.actions[:, : self.act_steps])
                obs_buffer[step] = obs
                chain_buffer[step] = sample.chains
                reward_buffer[step] = result.reward
                terminated_buffer[step] = result.terminated
                ends_buffer[step] = result.terminated | result.truncated
                next_obs_buffer[step] = result.final_obs
                episodes += [stats for _, stats in self.tracker.update(result.reward, result.n_executed,
                                                                        ends_buffer[step])]
                env_steps += int(result.n_executed.sum())
                sim_errors += int(result.sim_errors.sum())
                obs = result.obs
            rollout_time = timer.lap()
            self.env_steps += env_steps

            # ---- advantages over environment steps -------------------------------------------
            if self.reward_scaler is not None:
                scaled_rewards = torch.stack([self.reward_scaler(reward_buffer[t], ends_buffer[t])
                                              for t in range(n_steps)])
            else:
                scaled_rewards = reward_buffer * train.reward_scale_const
            n_samples = n_steps * n_envs
            obs_flat = obs_buffer.reshape(n_samples, *obs_buffer.shape[2:])
            next_obs_flat = next_obs_buffer.reshape_as(obs_flat)
            chains_flat = chain_buffer.reshape(n_samples, *chain_buffer.shape[2:])
            with torch.no_grad():
                values, next_values, old_log_probs = [], [], []
                for idx in torch.arange(n_samples, device=self.device).split(train.batch_size):
                    cond = {"state": obs_flat[idx]}
                    values.append(model.critic(cond))
                    next_values.append(model.critic({"state": next_obs_flat[idx]}))
                    old_log_probs.append(model.reduced_log_probs(cond, chains_flat[idx]))
                values = torch.cat(values).view(n_steps, n_envs)
                next_values = torch.cat(next_values).view(n_steps, n_envs) * (~terminated_buffer)
                old_log_probs = torch.cat(old_log_probs)
            advantages = compute_gae(scaled_rewards, values, next_values, ends_buffer, train.gamma, train.gae_lambda)
            returns = (advantages + values).reshape(-1)
            advantages, values = advantages.reshape(-1), values.reshape(-1)

            # ---- PPO epochs over minibatches of environment samples ---------------------------
            update_actor = self.itr >= train.n_critic_warmup_itr
            history = {key: [] for key in ("loss", "pg_loss", "value_loss", "bc_loss", "approx_kl", "clipfrac",
                                           "ratio")}
            for _ in range(train.update_epochs):
                stop = False
                for idx in torch.randperm(n_samples, device=self.device).split(train.batch_size):
                    out = model.loss({"state": obs_flat[idx]}, chains_flat[idx], returns[idx], values[idx],
                                     advantages[idx], old_log_probs[idx], use_bc_loss=train.use_bc_loss)
                    loss = out.pg_loss + train.vf_coef * out.v_loss + train.bc_coef * out.bc_loss
                    self.actor_optimizer.zero_grad()
                    self.critic_optimizer.zero_grad()
                    loss.backward()
                    if update_actor:
                        if train.max_grad_norm is not None:
                            torch.nn.utils.clip_grad_norm_(model.actor_ft.parameters(), train.max_grad_norm)
                        self.actor_optimizer.step()
                    self.critic_optimizer.step()
                    for key, value in (("loss", loss.item()), ("pg_loss", out.pg_loss.item()),
                                       ("value_loss", out.v_loss.item()), ("bc_loss", out.bc_loss.item()),
                                       ("approx_kl", out.approx_kl), ("clipfrac", out.clipfrac),
                                       ("ratio", out.ratio)):
                        history[key].append(value)
                    if train.target_kl is not None and out.approx_kl > train.target_kl:
                        stop = True
                        break
                if stop:
                    break
            if update_actor:
                self.actor_lr_scheduler.step()
            self.critic_lr_scheduler.step()
            update_time = timer.lap()

            # ---- metrics, evaluation, checkpoint ---------------------------------------------------
            self.itr += 1
            self.wall_time += rollout_time + update_time
            metrics = summarize(episodes)
            metrics.update({key: float(np.mean(values_)) for key, values_ in history.items()})
            metrics.update({
                "explained_variance": explained_variance(values, returns),
                "actor_lr": self.actor_optimizer.param_groups[0]["lr"],
                "critic_lr": self.critic_optimizer.param_groups[0]["lr"],
                "env_steps": self.env_steps,
                "env_steps_per_s": env_steps / rollout_time,
                "rollout_time": rollout_time,
                "update_time": update_time,
                "wall_time": self.wall_time,
                "sim_errors": sim_errors,
                "worker_restarts": self.venv.n_worker_restarts,
                "minibatch_updates": len(history["loss"]),
            })
            self.logger.log(metrics, step=self.itr, prefix="train")
            if self.evaluate_and_log():
                obs = None  # evaluation used the envs: the next iteration starts fresh episodes
            self.save()
        self.finish()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns); nan when the returns do not vary."""
    var_returns = returns.var()
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns - values).var() / var_returns)
