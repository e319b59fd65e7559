"""The `train` settings every fine-tuning algorithm shares (the loop of agent/finetune/base.py); each algorithm's
agent declares its own on top (`FinetuneAgent.train_settings`). Values: cfg/finetune.yaml, cfg/algorithm/*.yaml,
the task files; docs/SETTINGS.md lists them all."""

from dataclasses import dataclass

from dppo.schema import setting


@dataclass
class LRScheduleSettings:
    first_cycle_steps: int = setting("iterations of the first cosine cycle", low=1)
    warmup_steps: int = setting("iterations of linear warm-up", low=0)
    min_lr: float = setting("the learning rate the cosine ends at", low=0)
    restarts: bool = setting("restart the cosine every first_cycle_steps (ReinFlow)", default=False)


@dataclass
class FinetuneSettings:
    n_train_itr: int = setting("fine-tuning iterations", low=1)
    n_steps: int = setting("chunk-steps each env collects per iteration", low=1)
    batch_size: int = setting("samples per gradient step (minibatch)", low=1)
    eval_interval: int | None = setting("iterations between evaluations (null: none)", low=1)
    n_eval_episodes: int | None = setting("episodes per evaluation (null: one per env)", low=1)
    sampling_threads: int | None = setting("torch threads while the policy samples (null: the job's)", low=1)
    save_model_freq: int = setting("iterations between kept checkpoints", low=1)
    reset_at_iteration: bool = setting("reset every env at the start of each iteration")
    gamma: float = setting("discount per chunk-step", low=0, high=1)
    reward_scale_running: bool = setting("divide rewards by the running std of the discounted return")
    reward_scale_const: float = setting("reward factor when reward_scale_running is false", above=0)
    reward_offset: float = setting("subtracted from every env step's reward before learning (episode returns are "
                                   "reported as the env gives them)")
    n_critic_warmup_itr: int = setting("first iterations that train only the critics", low=0)
    max_grad_norm: float | None = setting("actor gradient-norm clip (null: none)", above=0)
    actor_lr: float = setting("actor learning rate", low=0)
    actor_weight_decay: float = setting("actor AdamW weight decay", low=0)
    actor_lr_scheduler: LRScheduleSettings = setting("the actor's warm-up cosine schedule")
    critic_lr: float = setting("critic learning rate", low=0)
    critic_weight_decay: float = setting("critic AdamW weight decay", low=0)
    critic_lr_scheduler: LRScheduleSettings = setting("the critic's warm-up cosine schedule")


@dataclass
class EpochSettings(FinetuneSettings):
    """On-policy algorithms that pass over the rollout in epochs (PPO, DRWR)."""

    update_epochs: int = setting("passes over the rollout per iteration", low=1)


@dataclass
class ReplaySettings(FinetuneSettings):
    """Off-policy algorithms that learn from a replay buffer (DAWR, DQL, IDQL, DSRL)."""

    buffer_size: int = setting("replay capacity in chunk-steps per env", low=1)


@dataclass
class ReplayRatioSettings(ReplaySettings):
    """Off-policy algorithms whose gradient steps per iteration follow the new samples (DAWR, DQL, IDQL)."""

    replay_ratio: float = setting("gradient steps per iteration = new samples / batch_size x replay_ratio", above=0)


@dataclass
class TargetNetworkSettings:
    """Algorithms whose critics have Polyak-averaged target copies (DQL, IDQL, DSRL): one name, `tau`, for all."""

    tau: float = setting("Polyak rate of the target critics", low=0, high=1)
