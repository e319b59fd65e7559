"""The fine-tuning loop every algorithm shares.

Each iteration: roll out `n_steps` action chunks in `n_envs` envs into a `Rollout`
(obs, what the policy stored, rewards, terminated, ends, final obs), scale the
rewards once for the whole rollout, append it to the replay buffer when the
algorithm has one, call the algorithm's `update`, then log, evaluate every
`eval_interval` iterations and checkpoint. Resuming restores all of it.

An algorithm is a subclass that builds its critics (`build_critic`, from the config's
critic group) and optimizers (`add_optimizer`, each with its role: actor or critic) in `__init__`, and writes
`update(rollout)`, running its forward passes under `self.autocast()`
(the run's `precision`); `off_policy = True` gives it a replay buffer (`self.replay`) that already
holds the rollout when `update` runs. When the most derived `__init__` returns, the agent starts on its own
(`_start`: weights shared over ranks, resumed state loaded, run dir opened); a module kept in a plain list, tuple
or dict (not checkpointed) is refused then.
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

import functools
import os
import signal
import threading

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from agent.eval.episodes import EpisodeTracker
from agent.finetune.checkpointing import Checkpointing
from agent.finetune.collection import RolloutCollection
from agent.finetune.evaluation import EvaluationAndLogging
from agent.finetune.metrics import Timer
from agent.finetune.optimization import Optimization
from agent.finetune.replay import ReplayBuffer
from agent.finetune.rollout import Rollout
from agent.finetune.settings import FinetuneSettings
from dppo.checkpoint import last_checkpoint_path, resolve_resume
from dppo.config import require
from dppo.distributed import any_rank, broadcast_tensor, init_distributed, mean_metrics_over_ranks
from dppo.divergence import check_finite
from dppo.logging import MetricLogger
from dppo.precision import autocast, check_precision
from dppo.runtime import env_seed, prepare_run_dir, set_seed, wandb_config
from dppo.schedulers import RunningRewardScaler, WarmupCosineLR
from env.settings import EnvSettings
from env.vector import make_task_vector_env
from model.common.policy import FinetunePolicy

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a cluster's preemption: checkpoint the iteration, then stop


class FinetuneAgent(RolloutCollection, Optimization, EvaluationAndLogging, Checkpointing):
    """The loop and what an algorithm builds on; collection, optimization, evaluation and checkpoints are the
    parts in their own files (agent/finetune/collection.py, optimization.py, evaluation.py, checkpointing.py)."""

    off_policy = False  # off-policy algorithms get a replay buffer of train.buffer_size chunk-steps per env
    reads_stored = False  # whether `update` reads what the policy's `explore` stores (PPO: chains, log-probs)
    supports_torchrun = True  # data-parallel under torchrun (see the module docstring)
    train_settings = FinetuneSettings  # the schema of `train`: each algorithm's own (dppo/schema.py)

    def __init_subclass__(cls, **kwargs):
        """Every algorithm starts when its most derived `__init__` has built its modules and optimizers: that
        `__init__` is wrapped to call `_start` after it, so no algorithm can forget to."""
        super().__init_subclass__(**kwargs)
        build = cls.__init__

        @functools.wraps(build)
        def build_then_start(self, *args, **kwargs):
            build(self, *args, **kwargs)
            if type(self) is cls:
                self._start()

        cls.__init__ = build_then_start

    @classmethod
    def settings_schemas(cls) -> dict:
        """{config group: its schema}, checked by dppo.config.validate_config before anything is built."""
        return {"env": EnvSettings, "train": cls.train_settings}

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
            cfg.env, n_envs=self.n_envs, cond_steps=cfg.cond_steps, act_steps=cfg.act_steps,
            normalization_path=cfg.normalization_path, device=self.device, asynchronous=cfg.env.asynchronous,
            seed=env_seed(cfg.seed, "build") + self.env_offset,
            video_dir=os.path.join(self.logdir, "videos") if save_video else None,
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
        self.optimizer_roles: dict[str, str] = {}  # name -> actor or critic
        self.lr_schedulers: dict[str, WarmupCosineLR] = {}
        self.itr = 0
        self.env_steps = 0
        self.wall_time = 0.0
        self.tracker = EpisodeTracker(self.n_envs, self.act_steps)
        self.next_firsts = torch.ones(self.n_envs, dtype=torch.bool, device=self.device)
        self.resume_path = resume[0] if resume else None
        self.stop_signal = None
        self.logger = None

    def _start(self) -> None:
        """Run when the algorithm's __init__ returns (`__init_subclass__`): refuse modules the checkpoint would miss,
        share rank 0's weights, load the resumed state, open the run dir and logger (rank 0), and stop at the end of
        the iteration on SIGTERM / SIGUSR1."""
        hidden = [name for name, value in vars(self).items() if isinstance(value, (list, tuple, dict))
                  and any(isinstance(item, nn.Module) for item in (value.values() if isinstance(value, dict) else value))]
        if hidden:
            raise TypeError(f"{type(self).__name__}.{hidden[0]} holds modules in a plain container, which checkpoints "
                            "would miss: keep each module as an attribute, or use nn.ModuleList / nn.ModuleDict.")
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
