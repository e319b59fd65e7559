"""Behaviour-cloning pre-training of a policy on demonstrations.

One loop serves the diffusion policy (DDPM loss) and the Gaussian policy (NLL):
every policy exposes `bc_loss(actions, cond)`. AdamW, warmup-cosine LR stepped per
epoch, an EMA of the denoiser stepped with the optimizer, atomic checkpoints,
metrics to stdout / metrics.jsonl / metrics.csv / wandb, and a loss-curve PNG.

Under torchrun the loop is data-parallel (dppo/distributed.py): every rank draws the same
global batches of `train.batch_size` windows and trains on its `batch_size / world_size` slice,
DistributedDataParallel averages the gradients, and rank 0 alone logs, keeps the EMA and saves.
"""

import os
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dppo.checkpoint import (
    checkpoint_dir,
    checkpoint_path,
    last_checkpoint_path,
    load_checkpoint,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dppo.config import ConfigError
from dppo.distributed import (
    broadcast_from_main,
    close_distributed,
    data_parallel_loss,
    init_distributed,
    main_rank_first,
    mean_over_ranks,
    shard,
)
from dppo.divergence import check_finite
from dppo.ema import EMA
from dppo.logging import MetricLogger
from dppo.optimizers import adamw
from dppo.precision import autocast, check_precision
from dppo.runtime import derived_seed, prepare_run_dir, set_seed, wandb_config
from dppo.schedulers import WarmupCosineLR


class PreTrainAgent:
    supports_torchrun = True

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        train = cfg.train
        self.rank = init_distributed(cfg.device)
        if train.batch_size % self.rank.world_size != 0:
            raise ConfigError(f"train.batch_size={train.batch_size} is the global batch and must divide among "
                              f"{self.rank.world_size} processes: use a multiple of {self.rank.world_size}.")
        cfg.device = self.rank.device
        set_seed(cfg.seed)
        self.device = cfg.device
        self.precision = check_precision(cfg.precision)
        resume = resolve_resume(cfg.resume, cfg.logdir)
        self.logdir = broadcast_from_main(resume[1] if resume else cfg.logdir, self.rank)
        with main_rank_first(self.rank):  # the dataset (re)writes its normalization.npz
            self.dataset = hydra.utils.instantiate(cfg.train_dataset)
        self.model = hydra.utils.instantiate(cfg.model)
        self.ema = None
        if self.rank.is_main:
            self.ema = EMA(self.model.network, decay=train.ema.decay, start_step=train.ema.start_step,
                           update_every=train.ema.update_every)
        self.optimizer = adamw(self.model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay,
                               device=self.device)
        self.lr_scheduler = WarmupCosineLR(self.optimizer, first_cycle_steps=train.n_epochs,
                                           warmup_steps=train.lr_scheduler.warmup_steps,
                                           max_lr=train.learning_rate, min_lr=train.lr_scheduler.min_lr)
        self.epoch = 0
        self.step = 0
        if resume:
            self.load(resume[0])
        if self.rank.world_size > 1:
            torch.manual_seed(derived_seed(cfg.seed, self.rank.rank, self.epoch))  # each rank its own loss noise
        self.train_loss = data_parallel_loss(self.model, self.rank)
        self.logger = None
        if self.rank.is_main:
            prepare_run_dir(self.logdir, cfg)
            self.logger = MetricLogger(self.logdir, wandb_cfg=wandb_config(cfg), config=OmegaConf.to_container(cfg),
                                       resume=resume is not None, resume_step=self.epoch)

    def epoch_batches(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """The global batches (window indices) of `epoch`: a permutation drawn from (seed, epoch) alone, so that
        every rank draws the same one and a resumed run the same as an uninterrupted one."""
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, epoch))
        return torch.randperm(len(self.dataset), generator=generator).split(self.cfg.train.batch_size)

    def run(self) -> None:
        train = self.cfg.train
        world = self.rank.world_size
        if self.rank.is_main:
            print(f"Pre-training {type(self.model).__name__} on {len(self.dataset)} windows, batch {train.batch_size}"
                  f"{f' = {world} processes x {train.batch_size // world}' if world > 1 else ''}, {self.precision}; "
                  f"run dir {self.logdir}")
        start = time.time()
        for epoch in tqdm(range(self.epoch, train.n_epochs), desc="epochs", initial=self.epoch, total=train.n_epochs,
                          disable=not self.rank.is_main):
            self.model.train()
            losses = []
            for indices in self.epoch_batches(epoch):
                if len(indices) < world:  # a last batch too small to give every rank a window
                    continue
                shard_indices = shard(indices, self.rank)
                batch = self.dataset.get_batch(shard_indices.to(self.dataset.states.device))
                # Scaled so that the mean over ranks of the shards' losses (and gradients) is the global batch's mean.
                with autocast(self.precision, self.device):
                    loss = self.train_loss(batch["actions"], batch["cond"]) * (len(shard_indices) * world / len(indices))
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.model.network, self.step)
                losses.append(loss.item())
            epoch_loss = mean_over_ranks(sum(losses) / len(losses), self.rank)
            check_finite(f"Epoch {epoch + 1}", {"loss": epoch_loss}, self.model,
                         last_good=f"checkpoint/last.pt (epoch {self.epoch})" if self.epoch else "nothing saved yet")
            self.epoch = epoch + 1
            if self.rank.is_main:
                self.logger.log({"loss": epoch_loss, "lr": self.optimizer.param_groups[0]["lr"], "epoch": self.epoch,
                                 "gradient_steps": self.step, "wall_time": time.time() - start}, step=self.epoch,
                                prefix="train")
            self.lr_scheduler.step()
            if self.rank.is_main and (self.epoch % train.save_model_freq == 0 or self.epoch == train.n_epochs):
                self.save()
        if self.rank.is_main:
            self.logger.plot({"loss": ["train/loss"], "lr": ["train/lr"]}, filename="loss.png")
            self.export_policy()
            self.logger.close()
        close_distributed()

    def save(self) -> None:
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        save_checkpoint(checkpoint_path(self.logdir, self.epoch), state)
        save_checkpoint(last_checkpoint_path(self.logdir), state)

    def load(self, path: str) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        print(f"Resumed from {path} at epoch {self.epoch}")

    def export_policy(self) -> None:
        """Write checkpoint/policy.pt (EMA denoiser weights + model config only), and a copy at export_policy_path."""
        policy = {"network": self.ema.state_dict(), "model_config": OmegaConf.to_container(self.cfg.model, resolve=True),
                  "epoch": self.epoch}
        save_checkpoint(os.path.join(checkpoint_dir(self.logdir), "policy.pt"), policy)
        if self.cfg.get("export_policy_path"):
            save_checkpoint(self.cfg.export_policy_path, policy)
            print(f"Exported policy to {self.cfg.export_policy_path}")
