"""The fine-tuning loop every algorithm shares.

Each iteration: roll out `n_steps` action chunks in `n_envs` envs into a `Rollout`
(obs, what the policy stored, rewards, terminated, ends, final obs), scale the
rewards once for the whole rollout, append it to the replay buffer when the
algorithm has one, call the algorithm's `update`, then log, evaluate every
`val_freq` iterations and checkpoint. Resuming restores all of it.

An algorithm is a subclass that builds its critics (`build_critic`, from the config's
critic group) and optimizers (`add_optimizer`) in `__init__`, ends `__init__` with
`self.start()`, and writes `update(rollout)`, running its forward passes under `self.autocast()`
(the run's `precision`); `off_policy = True` gives it a replay buffer (`self.replay`) that already
holds the rollout when `update` runs.
The policy (`self.model`) is any FinetunePolicy (model/common/policy.py). The agent acts
with `explore(cond) -> (actions, stored)` while training and `act(cond)` in evaluation,
the policy's own unless the algorithm acts otherwise (IDQL picks among candidates by Q).
Checkpoints hold every nn.Module attribute of the agent (the policy, critics, targets)
by attribute name, with optimizers, schedules, reward scaling, replay and RNG state.

Under torchrun (dppo/distributed.py) the loop is data-parallel and computes what one process with
world_size x env.n_envs envs would: each rank steps its own `env.n_envs` envs (env i of rank r is
env r * n_envs + i of the run, seeded as such) and collects its rollout; the ranks' rollouts are
gathered along the env axis, so every rank holds the iteration's whole rollout, scales its rewards
with one reward scaler over all envs and keeps the same replay. The update then draws its
minibatches from rank 0's random generator (`shared_randperm`, `shared_randint`, `replay_sample`),
normalizes advantages over the whole minibatch, computes each loss on the rank's share of it
(`rank_share`, train.batch_size divisible by world_size) and averages gradients over the ranks
before every optimizer step (`optimizer_step`, `actor_step`); metrics are averaged over ranks, so a
target-KL stop is one decision. Episode statistics and env steps are those of all ranks. Rank 0
evaluates (on its envs), logs and writes checkpoints, which hold every rank's RNG state.
SIGTERM / SIGUSR1 (Slurm's warning before preemption) end the run after the current iteration's
checkpoint; the same command line with `resume=auto` continues it.
"""

import os
import signal
import threading
import time

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from agent.eval.rollout import run_episodes
from agent.finetune.episodes import EpisodeTracker, summarize
from agent.finetune.replay import ReplayBuffer
from agent.finetune.rollout import Rollout, index_samples, stack_steps
from dppo.checkpoint import (
    checkpoint_path,
    last_checkpoint_path,
    load_checkpoint,
    load_state_dict_checked,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dppo.config import ConfigError, require
from dppo.distributed import (
    any_rank,
    average_gradients,
    broadcast_tensor,
    close_distributed,
    gather_envs,
    gather_objects,
    init_distributed,
    mean_metrics_over_ranks,
    shard,
)
from dppo.divergence import check_finite
from dppo.logging import MetricLogger
from dppo.optimizers import adamw
from dppo.precision import autocast, check_precision
from dppo.runtime import prepare_run_dir, set_seed, torch_threads, wandb_config
from dppo.schedulers import RunningRewardScaler, WarmupCosineLR
from env.vector import cat_samples, concat_steps, make_task_vector_env
from model.common.policy import FinetunePolicy

EVAL_SEED_OFFSET = 1_000_000
CHECKPOINT_FORMAT = 2  # 2: modules by attribute name (policy apart from critics); 1: one model with its critics
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a cluster's preemption: checkpoint the iteration, then stop


class FinetuneAgent:
    off_policy = False  # off-policy algorithms get a replay buffer of train.buffer_size chunk-steps per env
    reads_stored = False  # whether `update` reads what the policy's `explore` stores (PPO: chains, log-probs)
    supports_torchrun = True  # data-parallel under torchrun (see the module docstring)

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.rank = init_distributed(cfg.device)
        set_seed(cfg.seed)  # the same initial weights on every rank; ranks > 0 sample with their own seed (start)
        self.device = self.rank.device
        self.precision = check_precision(cfg.precision)
        world = self.rank.world_size
        require(world == 1 or cfg.train.batch_size % world == 0,
                f"train.batch_size={cfg.train.batch_size} does not split evenly over {world} processes: use a "
                f"multiple of {world}.")
        resume = resolve_resume(cfg.resume, cfg.logdir)
        self.logdir = resume[1] if resume else cfg.logdir
        self.n_envs = cfg.env.n_envs  # this rank's envs
        self.n_envs_total = self.n_envs * world  # the run's: every rank's
        self.env_offset = self.rank.rank * self.n_envs  # env i of this rank is env env_offset + i of the run
        self.act_steps = cfg.act_steps
        save_video = cfg.env.save_video and self.rank.is_main
        self.venv = make_task_vector_env(
            cfg.env, n_envs=self.n_envs, n_obs_steps=cfg.cond_steps, n_action_steps=cfg.act_steps,
            normalization_path=cfg.normalization_path, device=self.device, asynchronous=cfg.env.asynchronous,
            seed=cfg.seed + self.env_offset, video_dir=os.path.join(self.logdir, "videos") if save_video else None,
            n_groups=2 if cfg.env.get("overlap_rollout") and self.n_envs >= 2 else 1,
        )
        self.model = hydra.utils.instantiate(cfg.model)
        require(isinstance(self.model, FinetunePolicy),
                f"{cfg.model._target_} is not a policy that can be fine-tuned (model/common/policy.py FinetunePolicy).")
        train = cfg.train
        self.reward_scaler = (RunningRewardScaler(self.n_envs_total, gamma=train.gamma) if train.reward_scale_running
                              else None)
        self.replay = None
        if self.off_policy:
            require(train.get("buffer_size") is not None,
                    f"{type(self).__name__} replays its data: set train.buffer_size (chunk-steps per env).")
            self.replay = ReplayBuffer(train.buffer_size, self.n_envs_total, self.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.lr_schedulers: dict[str, WarmupCosineLR] = {}
        self.itr = 0
        self.env_steps = 0
        self.wall_time = 0.0
        self.tracker = EpisodeTracker(self.n_envs, self.act_steps)
        self.next_firsts = torch.ones(self.n_envs, dtype=torch.bool, device=self.device)
        self.resume_path = resume[0] if resume else None
        self.stop_signal = None
        self.logger = None

    def start(self) -> None:
        """Call at the end of a subclass's __init__: share rank 0's weights, load the resumed state, open the run dir
        and logger (rank 0), and stop at the end of the iteration on SIGTERM / SIGUSR1."""
        if self.rank.world_size > 1:
            for module in self.checkpointed_modules().values():
                for tensor in [*module.parameters(), *module.buffers()]:
                    broadcast_tensor(tensor.data, self.rank)
            if not self.rank.is_main:
                set_seed(self.cfg.seed + self.rank.rank)  # each rank samples its own exploration noise
        if self.resume_path is not None:
            self.load(self.resume_path)
        if threading.current_thread() is threading.main_thread():  # Python installs handlers there only
            for stop_signal in STOP_SIGNALS:
                signal.signal(stop_signal, self.request_stop)
        if not self.rank.is_main:
            return
        prepare_run_dir(self.logdir, self.cfg)
        self.logger = MetricLogger(self.logdir, wandb_cfg=wandb_config(self.cfg),
                                   config=OmegaConf.to_container(self.cfg), resume=self.resume_path is not None,
                                   resume_step=self.itr)
        processes = f" x {self.rank.world_size} processes" if self.rank.world_size > 1 else ""
        print(f"{type(self).__name__} on {self.cfg.env_name} with {self.n_envs} envs{processes}, {self.precision}; "
              f"run dir {self.logdir}")

    def request_stop(self, signum, frame) -> None:
        """Signal handler: finish the iteration, checkpoint it, then stop (see `run`)."""
        self.stop_signal = signal.Signals(signum).name

    # ---- what an algorithm writes ------------------------------------------------------------
    def update(self, rollout: Rollout) -> dict:
        """Train on the iteration's rollout (and the replay buffer, already holding it); return metrics."""
        raise NotImplementedError

    def build_critic(self, key: str, **kwargs) -> nn.Module:
        """The critic of config entry `key` (critic, critic_q, critic_v: the `critic` config group), on the device;
        kwargs complete its config with what the algorithm decides (DSRL: the width of the critic's input)."""
        require(self.cfg.get(key) is not None, f"{type(self).__name__} needs a `{key}` config: add "
                f"`critic@{key}: <name>` (cfg/critic/) to the defaults list.")
        return hydra.utils.instantiate(self.cfg[key], **kwargs).to(self.device)

    def autocast(self):
        """The context of an update's forward passes and of rollout sampling: bf16 autocast when `precision=bf16`,
        else none. Backward passes and optimizer steps run outside it (float32 gradients and optimizer state);
        evaluation acts in float32."""
        return autocast(self.precision, self.device)

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring chunks (B, Ta, Da) and what the rollout stores beside them: the policy's by default, or
        nothing when the algorithm never reads it (the policy then skips computing it: `explore_actions`)."""
        if self.reads_stored:
            return self.model.explore(cond)
        return self.model.explore_actions(cond), {}

    def act(self, cond: dict) -> torch.Tensor:
        """Deterministic chunks (B, Ta, Da) for evaluation: the policy's by default."""
        return self.model.act(cond)

    @classmethod
    def evaluation_actor(cls, policy: FinetunePolicy, cfg: DictConfig, modules: dict, device: str):
        """What evaluates a checkpoint of this algorithm (agent/eval): something with `act` and `explore`, built
        from the checkpoint's config and module states. The policy itself, unless the algorithm acts otherwise."""
        return policy

    # ---- optimizers ----------------------------------------------------------------------------
    def add_optimizer(self, name: str, parameters, role: str) -> torch.optim.Optimizer:
        """AdamW with a warmup-cosine LR schedule from train.<role>_lr, <role>_weight_decay and
        <role>_lr_scheduler (role: actor or critic); saved with checkpoints, stepped once per iteration."""
        train = self.cfg.train
        lr = train[f"{role}_lr"]
        optimizer = adamw(parameters, lr=lr, weight_decay=train[f"{role}_weight_decay"], device=self.device)
        self.optimizers[name] = optimizer
        self.lr_schedulers[name] = WarmupCosineLR(optimizer, max_lr=lr, **train[f"{role}_lr_scheduler"])
        return optimizer

    @property
    def update_actor(self) -> bool:
        """False during the first `n_critic_warmup_itr` iterations, when only critics train."""
        return self.itr >= self.cfg.train.n_critic_warmup_itr

    def actor_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step the actor after critic warm-up, its gradients clipped to `max_grad_norm` when set."""
        if self.update_actor:
            self.optimizer_step(optimizer, self.cfg.train.max_grad_norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None = None) -> None:
        """One step of `optimizer` (a critic's as it is; the actor's through `actor_step`): its gradients averaged
        over the ranks, then clipped to `max_grad_norm` when given."""
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        average_gradients(parameters, self.rank)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()

    # ---- random draws of an update, shared by the ranks ------------------------------------------
    def shared_randperm(self, n: int) -> torch.Tensor:
        """A permutation of 0..n-1 (n,) drawn by rank 0 (the single-process draw) and used by every rank."""
        return broadcast_tensor(torch.randperm(n, device=self.device), self.rank)

    def shared_randint(self, high: int, size: int) -> torch.Tensor:
        """(size,) indices uniform in 0..high-1 with replacement, drawn by rank 0 and used by every rank."""
        return broadcast_tensor(torch.randint(high, (size,), device=self.device), self.rank)

    def rank_share(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous, equal share of a global minibatch (B, ...) -> (B / world_size, ...)."""
        return shard(x, self.rank)

    def replay_sample(self, batch_size: int) -> dict:
        """This rank's share of a global replay batch of `batch_size` samples (fields (B / world_size, ...))."""
        return self.replay.sample(batch_size, pick=lambda n, size: self.rank_share(self.shared_randint(n, size)))

    def step_lr_schedulers(self) -> None:
        """One LR-schedule step per iteration; the actor's schedule starts after critic warm-up."""
        for name, scheduler in self.lr_schedulers.items():
            if name != "actor" or self.update_actor:
                scheduler.step()

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        train = self.cfg.train
        obs = None
        if self.itr == 0:
            self.evaluate_and_log()  # the pre-trained policy
        while self.itr < train.n_train_itr:
            timer = Timer()
            self.model.set_training_progress(self.itr / train.n_train_itr)
            if obs is None or train.reset_at_iteration:
                obs = self.reset_envs()
            rollout, obs, rollout_metrics = self.collect_rollout(obs)
            rollout_time = timer.lap()
            metrics = self.learn(rollout)
            update_time = timer.lap()

            self.itr += 1
            self.wall_time += rollout_time + update_time
            metrics.update(rollout_metrics)
            metrics.update({f"{name}_lr": opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()})
            metrics.update({
                "env_steps": self.env_steps,
                "env_steps_per_s": rollout_metrics["iteration_env_steps"] / rollout_time,
                "rollout_time": rollout_time,
                "update_time": update_time,
                "wall_time": self.wall_time,
            })
            if self.replay is not None:
                metrics["replay_size"] = len(self.replay)
            if self.rank.is_main:
                self.logger.log(metrics, step=self.itr, prefix="train")
            if self.evaluate_and_log():
                obs = None  # evaluation used the envs: the next iteration starts fresh episodes
            self.save()
            if any_rank(self.stop_signal is not None, self.rank) and self.itr < train.n_train_itr:
                if self.rank.is_main:
                    print(f"Stopped by {self.stop_signal or 'a signal to another rank'} after iteration {self.itr}: "
                          f"{last_checkpoint_path(self.logdir)} holds it; the same command with resume=auto continues.",
                          flush=True)
                break
        self.finish()

    def learn(self, rollout: Rollout) -> dict:
        """The iteration's learning from its rollout: into the replay (off-policy), the algorithm's update, its
        metrics averaged over the ranks and checked for NaN, one LR-schedule step."""
        if self.replay is not None:
            self.replay.add_rollout(rollout)
        metrics = mean_metrics_over_ranks(self.update(rollout), self.rank)
        check_finite(f"Iteration {self.itr + 1}", metrics, nn.ModuleDict(self.checkpointed_modules()),
                     last_good=f"checkpoint/last.pt (iteration {self.itr})" if self.itr else "the pre-trained policy")
        self.step_lr_schedulers()
        return metrics

    def reset_envs(self) -> dict:
        """Reset every env with seeds derived from the iteration, so a resumed run sees the same episodes.

        Every env starts a new episode, so the reward scaler's running returns restart too.
        """
        self.tracker = EpisodeTracker(self.n_envs, self.act_steps)
        self.next_firsts = torch.ones(self.n_envs, dtype=torch.bool, device=self.device)
        return self.venv.reset(seed=self.cfg.seed + self.itr * self.n_envs_total + self.env_offset)

    def collect_rollout(self, obs: dict) -> tuple[Rollout, dict, dict]:
        """n_steps exploring action chunks in every env from `obs` {key: (n_envs, To, ...)}.

        The envs come in groups (`env.overlap_rollout`: two): the policy samples the next chunks of one group
        while the workers of the other step, so sampling and simulation overlap. With one group the two
        alternate. Torch runs on `train.sampling_threads` meanwhile. Returns the rollout (every rank's, gathered
        along the env axis, rewards scaled), this rank's observation to continue from, and the rollout's metrics
        (episodes that finished in it in any rank's envs, env steps, simulator errors).
        """
        groups = self.venv.groups
        steps = {key: [] for key in ("obs", "next_obs", "actions", "stored", "rewards", "terminated", "ends", "firsts",
                                     "cut")}
        episodes, env_steps, sim_errors, cut_before = [], 0, 0, self.tracker.n_cut
        with torch_threads(self.cfg.train.sampling_threads):  # sampling: many small ops, 1 thread by default
            launched = [self.launch(g, index_samples(obs, group)) for g, group in enumerate(groups)]
            for t in range(self.cfg.train.n_steps):
                group_steps = []
                for g in range(len(groups)):
                    group_steps.append((*launched[g], self.venv.step_wait(g)))
                    if t + 1 < self.cfg.train.n_steps:  # group g samples its next chunk while the other group steps
                        launched[g] = self.launch(g, group_steps[g][-1].obs)
                step_obs, actions, stored = (cat_samples([group_step[i] for group_step in group_steps]) for i in range(3))
                result = concat_steps([group_step[3] for group_step in group_steps])
                ends = result.terminated | result.truncated
                for key, value in (("obs", step_obs), ("next_obs", result.final_obs), ("actions", actions),
                                   ("stored", stored), ("rewards", result.reward), ("terminated", result.terminated),
                                   ("ends", ends), ("firsts", self.next_firsts), ("cut", result.cut & ends)):
                    steps[key].append(value)
                finished = self.tracker.update(result.reward, result.n_executed, ends, result.cut, result.success)
                episodes += [stats for _, stats in finished]
                env_steps += int(result.n_executed.sum())
                sim_errors += int(result.sim_errors.sum())
                self.next_firsts = ends
                obs = result.obs
        rollout = self.assemble_rollout({key: stack_steps(values) for key, values in steps.items()})
        per_rank = gather_objects((episodes, env_steps, sim_errors, self.tracker.n_cut - cut_before,
                                   self.venv.n_worker_restarts), self.rank)
        env_steps = sum(counts[1] for counts in per_rank)
        self.env_steps += env_steps
        metrics = summarize([episode for counts in per_rank for episode in counts[0]])
        metrics.update({"iteration_env_steps": env_steps, "sim_errors": sum(counts[2] for counts in per_rank),
                        "cut_episodes": sum(counts[3] for counts in per_rank),
                        "worker_restarts": sum(counts[4] for counts in per_rank)})
        return rollout, obs, metrics

    def assemble_rollout(self, steps: dict) -> Rollout:
        """This rank's collected steps {obs, next_obs, actions, stored, rewards, terminated, ends, firsts, cut}, each
        (T, n_envs, ...), -> the iteration's Rollout: every rank's steps side by side (T, n_envs_total, ...), rewards
        scaled once over all of them."""
        steps = gather_envs(steps, self.rank)
        return Rollout(obs=steps["obs"], next_obs=steps["next_obs"], actions=steps["actions"],
                       stored=steps["stored"], rewards=steps["rewards"],
                       scaled_rewards=self.scale_rewards(steps["rewards"], steps["firsts"]),
                       terminated=steps["terminated"], ends=steps["ends"], firsts=steps["firsts"], cut=steps["cut"])

    def launch(self, g: int, obs: dict) -> tuple[dict, torch.Tensor, dict]:
        """Sample exploring chunks for env group g's observations {key: (group size, To, ...)} and start stepping
        the group with their first act_steps actions. Returns (obs, actions, stored) of the group."""
        with torch.no_grad(), self.autocast():  # bf16 sampling: 17% faster at 40 envs, 3x at 800 candidates
            actions, stored = self.explore(obs)
        self.venv.step_async(g, actions[:, : self.act_steps])
        return obs, actions, stored

    def scale_rewards(self, rewards: torch.Tensor, firsts: torch.Tensor) -> torch.Tensor:
        """(T, N) rewards of one rollout (every rank's envs) -> scaled once for the whole rollout (running std or
        constant factor)."""
        if self.reward_scaler is not None:
            return self.reward_scaler(rewards, firsts)
        return rewards * self.cfg.train.reward_scale_const

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate_and_log(self) -> bool:
        """Every `val_freq` iterations (and before the first): evaluate, log `eval/*` and redraw the curves.

        Rank 0 evaluates; every rank returns whether this was an evaluation iteration (the envs then need a reset).
        """
        val_freq = self.cfg.train.val_freq
        if val_freq is None or self.itr % val_freq != 0:
            return False
        if not self.rank.is_main:
            return True
        self.model.eval()
        timer = Timer()
        metrics = self.evaluate()
        metrics["eval_time"] = timer.lap()
        self.wall_time += metrics["eval_time"]
        self.model.train()
        self.logger.log(metrics, step=self.itr, prefix="eval")
        self.plot_curves()
        return True

    def evaluate(self) -> dict:
        """Deterministic acting (`model.act`) for `train.n_eval_episodes` episodes (default: one per env,
        as the reference does); returns eval metrics (`success_rate` is that of deterministic acting, while
        train/success_rate is that of the exploring policy). The envs are reset with evaluation seeds first;
        torch runs on `train.sampling_threads`.
        """
        with torch_threads(self.cfg.train.sampling_threads):
            episodes = run_episodes(
                self.venv, self.act,
                n_episodes=self.cfg.train.n_eval_episodes or self.n_envs, act_steps=self.act_steps,
                seed=self.cfg.seed + EVAL_SEED_OFFSET + self.itr * self.n_envs,
            )
        return summarize(episodes)

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpointed_modules(self) -> dict[str, nn.Module]:
        """Every nn.Module attribute of the agent by name: the policy `model`, critics, target networks."""
        return {name: value for name, value in vars(self).items() if isinstance(value, nn.Module)}

    def save(self) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG state (a collective: every rank calls it)."""
        rank_rngs = gather_objects(rng_state(), self.rank)
        if not self.rank.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "itr": self.itr,
            "env_steps": self.env_steps,
            "wall_time": self.wall_time,
            "modules": {name: module.state_dict() for name, module in self.checkpointed_modules().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "lr_schedulers": {name: sched.state_dict() for name, sched in self.lr_schedulers.items()},
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
            "replay": self.replay.state_dict() if self.replay is not None else None,
            "rng": rank_rngs[0],
            "world_size": self.rank.world_size,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        if self.rank.world_size > 1:
            state["rank_rngs"] = rank_rngs
        if self.itr % self.cfg.train.save_model_freq == 0:
            save_checkpoint(checkpoint_path(self.logdir, self.itr), state)
        save_checkpoint(last_checkpoint_path(self.logdir), state)

    def load(self, path: str) -> None:
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} was written before policies and algorithms were split (checkpoint format "
                              f"{state.get('format', 1)}, this code reads {CHECKPOINT_FORMAT}): start a new run from "
                              "the pre-trained policy instead of resuming it.")
        saved_world = state.get("world_size", 1)
        if saved_world != self.rank.world_size:
            raise ConfigError(f"{path} was written by {saved_world} process(es) and this run has {self.rank.world_size}: "
                              f"resume it with as many (torchrun --nproc_per_node={saved_world} ...), or start anew.")
        for name, module in self.checkpointed_modules().items():
            load_state_dict_checked(module, state["modules"][name], what=f"{path} ({name})")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.lr_schedulers.items():
            scheduler.load_state_dict(state["lr_schedulers"][name])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])
        set_rng_state(state["rank_rngs"][self.rank.rank] if self.rank.world_size > 1 else state["rng"])
        self.itr, self.env_steps, self.wall_time = state["itr"], state["env_steps"], state["wall_time"]
        if self.rank.is_main:
            print(f"Resumed from {path} at iteration {self.itr}")

    def plot_curves(self) -> None:
        """curves.png: train and eval return, then one panel per loss the algorithm logs."""
        self.logger.plot(curve_panels(self.logger.keys))

    def finish(self) -> None:
        if self.rank.is_main:
            self.plot_curves()
            self.logger.close()
        self.venv.close()
        close_distributed()


def curve_panels(logged_keys) -> dict[str, list[str]]:
    """Panels of curves.png: {"reward": train and eval return}, {"success": train and eval success rate} when
    logged, and one panel per logged `train/*loss` key."""
    panels = {"reward": ["train/episode_return", "eval/episode_return"]}
    if "train/success_rate" in logged_keys or "eval/success_rate" in logged_keys:
        panels["success"] = ["train/success_rate", "eval/success_rate"]
    panels.update({key.removeprefix("train/"): [key] for key in logged_keys
                   if key.startswith("train/") and key.endswith("loss")})
    return panels


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns); nan when the returns do not vary."""
    var_returns = returns.var()
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns - values).var() / var_returns)


def mean_metrics(history: dict[str, list[float]]) -> dict:
    """{key: mean of its values} over the keys that have values."""
    return {key: float(np.mean(values)) for key, values in history.items() if values}


class Timer:
    """Wall-clock seconds since construction or the last `lap()`."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
