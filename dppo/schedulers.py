"""Learning-rate schedule and running statistics used during training.

- `WarmupCosineLR`: linear warmup from `min_lr` to `max_lr`, then one cosine
  decay back to `min_lr`, then constant (the original DPPO
  `CosineAnnealingWarmupRestarts` with a single cycle).
- `RunningMeanStd` / `RunningRewardScaler`: PPO-style reward scaling by the
  standard deviation of the running discounted return.
"""

import math

import numpy as np
import torch


def warmup_cosine_lr(step: int, first_cycle_steps: int, warmup_steps: int, max_lr: float, min_lr: float) -> float:
    """Learning rate after `step` scheduler steps (see `WarmupCosineLR`)."""
    if step < warmup_steps:
        return min_lr + (max_lr - min_lr) * step / warmup_steps
    if step >= first_cycle_steps:
        return min_lr
    progress = (step - warmup_steps) / (first_cycle_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warmup over `warmup_steps`, cosine decay until `first_cycle_steps`, then `min_lr` forever, or, with
    `restarts`, the same cycle again every `first_cycle_steps` steps (ReinFlow's cosine restarts).

    The lr at step s (the number of `.step()` calls so far, 0 right after
    construction) is the same for all param groups:
    - s < warmup_steps: `min_lr + (max_lr - min_lr) * s / warmup_steps`;
    - warmup_steps <= s < first_cycle_steps: cosine from `max_lr` to `min_lr`;
    - s >= first_cycle_steps: `min_lr`.
    Constant lr: set `min_lr == max_lr`.
    """

    def __init__(self, optimizer, first_cycle_steps: int, warmup_steps: int, max_lr: float, min_lr: float,
                 restarts: bool = False):
        if not 0 <= min_lr <= max_lr:
            raise ValueError(
                f"lr scheduler needs 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}: fix them."
            )
        if not 0 <= warmup_steps <= first_cycle_steps:
            raise ValueError(
                f"lr scheduler needs 0 <= warmup_steps <= first_cycle_steps, got warmup_steps={warmup_steps}, "
                f"first_cycle_steps={first_cycle_steps}: lower warmup_steps or raise first_cycle_steps."
            )
        self.first_cycle_steps = first_cycle_steps
        self.warmup_steps = warmup_steps
        self.restarts = restarts
        self.max_lr = max_lr
        self.min_lr = min_lr
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        step = self.last_epoch % self.first_cycle_steps if self.restarts else self.last_epoch
        lr = warmup_cosine_lr(step, self.first_cycle_steps, self.warmup_steps, self.max_lr, self.min_lr)
        return [lr] * len(self.optimizer.param_groups)


class RunningMeanStd:
    """Running mean and variance over batches (parallel algorithm of Chan et al.), in float64.

    `mean`, `var`: arrays of `shape`; `count` starts at `epsilon` with mean 0
    and var 1, so the first batch is not divided by zero. As in the reference
    implementation, the pooled second moment M2 is divided by `count - 1`.
    """

    def __init__(self, shape: tuple = (), epsilon: float = 1e-4):
        self.shape = tuple(shape)
        self.mean = np.zeros(self.shape, dtype=np.float64)
        self.var = np.ones(self.shape, dtype=np.float64)
        self.count = epsilon

    def update(self, x: np.ndarray) -> None:
        """Add a batch x: (N, *shape)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != self.shape:
            raise ValueError(
                f"RunningMeanStd of shape {self.shape} got a batch of shape {x.shape}: pass (N, *{self.shape})."
            )
        batch_mean, batch_var, batch_count = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / (total - 1)
        self.count = total

    def state_dict(self) -> dict:
        """Tensors and a float, so checkpoints load with weights_only."""
        return {"mean": torch.tensor(self.mean, dtype=torch.float64), "var": torch.tensor(self.var, dtype=torch.float64),
                "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self.var = np.asarray(state["var"], dtype=np.float64).copy()
        self.count = float(state["count"])


class RunningRewardScaler:
    """Divides rewards by the running std of each env's discounted return, then clips (PPO reward scaling).

    Called once per iteration on the whole rollout, as the reference does: the per-env
    running returns `ret_t = r_t + gamma * (1 - first_t) * ret_{t-1}` of all T steps
    form one statistics update, then every reward of the rollout is divided by that
    one std: `clip(r / sqrt(var + epsilon), -clip, clip)`. The last running return of
    each env carries over to the next call.
    """

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.ret = np.zeros(n_envs, dtype=np.float64)
        self.rms = RunningMeanStd(shape=())

    def __call__(self, rewards: torch.Tensor, firsts: torch.Tensor) -> torch.Tensor:
        """rewards: (T, n_envs); firsts: (T, n_envs) bool, True where step t starts an episode.

        Returns scaled rewards (T, n_envs) with the dtype and device of `rewards`.
        """
        reward = rewards.detach().cpu().numpy().astype(np.float64)
        if reward.ndim != 2 or reward.shape[1] != self.ret.shape[0]:
            raise ValueError(
                f"RunningRewardScaler for {self.ret.shape[0]} envs got rewards of shape {tuple(reward.shape)}: "
                "pass (n_steps, n_envs)."
            )
        continues = 1.0 - firsts.detach().cpu().numpy().astype(np.float64)
        returns = np.zeros_like(reward)
        for t in range(reward.shape[0]):
            self.ret = reward[t] + self.gamma * continues[t] * self.ret
            returns[t] = self.ret
        self.rms.update(returns.reshape(-1))
        scaled = np.clip(reward / np.sqrt(self.rms.var + self.epsilon), -self.clip, self.clip)
        return torch.as_tensor(scaled, dtype=rewards.dtype, device=rewards.device)

    def state_dict(self) -> dict:
        return {"ret": torch.from_numpy(self.ret.copy()), "rms": self.rms.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        ret = np.asarray(state["ret"], dtype=np.float64).copy()
        if ret.shape != self.ret.shape:
            raise ValueError(
                f"The saved reward scaler tracks {ret.shape[0]} envs but this run has {self.ret.shape[0]}: "
                "set n_envs to match the checkpoint or start without resuming."
            )
        self.ret = ret
        self.rms.load_state_dict(state["rms"])
