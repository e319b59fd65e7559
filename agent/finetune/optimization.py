"""What an algorithm's update steps with (a part of FinetuneAgent, agent/finetune/base.py): optimizers with their
roles and LR schedules, the critic warm-up, and the minibatch draws every rank shares under torchrun (rank 0 draws,
each rank computes its share, gradients are averaged before each step).
"""

import torch

from dppo.config import require
from dppo.distributed import average_gradients, broadcast_tensor, shard
from dppo.optimizers import adamw
from dppo.schedulers import WarmupCosineLR


class Optimization:
    """Optimizers and their schedules (add_optimizer, actor_step, optimizer_step, step_lr_schedulers) and the
    minibatch draws shared by the ranks (shared_randperm, shared_randint, rank_share, replay_sample)."""

    def add_optimizer(self, name: str, parameters, role: str) -> torch.optim.Optimizer:
        """AdamW with a warmup-cosine LR schedule from train.<role>_lr, <role>_weight_decay and
        <role>_lr_scheduler (role: actor or critic: an actor's schedule waits for the critic warm-up); saved with
        checkpoints, stepped once per iteration."""
        require(role in ("actor", "critic"), f"add_optimizer({name!r}, role={role!r}): role must be actor or critic.")
        train = self.cfg.train
        self.optimizer_roles[name] = role
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
            if self.optimizer_roles[name] != "actor" or self.update_actor:
                scheduler.step()
