"""Behaviour-cloning pre-training of a policy on demonstrations.

One loop serves the diffusion policy (DDPM loss) and the Gaussian policy (NLL):
both models expose `loss(actions, cond)`. AdamW, warmup-cosine LR stepped per
epoch, an EMA of the denoiser stepped with the optimizer, atomic checkpoints,
metrics to stdout / metrics.jsonl / metrics.csv / wandb, and a loss-curve PNG.
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
from dppo.divergence import check_finite
from dppo.ema import EMA
from dppo.logging import MetricLogger
from dppo.runtime import prepare_run_dir, set_seed, wandb_config
from dppo.schedulers import WarmupCosineLR


class PreTrainAgent:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        set_seed(cfg.seed)
        self.device = cfg.device
        resume = resolve_resume(cfg.resume, os.path.dirname(cfg.logdir))
        self.logdir = resume[1] if resume else cfg.logdir
        self.dataset = hydra.utils.instantiate(cfg.train_dataset)
        self.model = hydra.utils.instantiate(cfg.model)
        train = cfg.train
        self.ema = EMA(self.model.network, decay=train.ema.decay, start_step=train.ema.start_step,
                       update_every=train.ema.update_every)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train.learning_rate,
                                           weight_decay=train.weight_decay)
        self.lr_scheduler = WarmupCosineLR(self.optimizer, first_cycle_steps=train.n_epochs,
                                           warmup_steps=train.lr_scheduler.warmup_steps,
                                           max_lr=train.learning_rate, min_lr=train.lr_scheduler.min_lr)
        self.epoch = 0
        self.step = 0
        if resume:
            self.load(resume[0])
        prepare_run_dir(self.logdir, cfg)
        self.logger = MetricLogger(self.logdir, wandb_cfg=wandb_config(cfg), config=OmegaConf.to_container(cfg),
                                   resume=resume is not None, resume_step=self.epoch)

    def run(self) -> None:
        train = self.cfg.train
        print(f"Pre-training {type(self.model).__name__} on {len(self.dataset)} windows; run dir {self.logdir}")
        start = time.time()
        for epoch in tqdm(range(self.epoch, train.n_epochs), desc="epochs", initial=self.epoch, total=train.n_epochs):
            self.model.train()
            losses = []
            for indices in torch.randperm(len(self.dataset)).split(train.batch_size):
                batch = self.dataset.get_batch(indices.to(self.dataset.states.device))
                loss = self.model.loss(batch["actions"], batch["cond"])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.step += 1
                self.ema.update(self.model.network, self.step)
                losses.append(loss.item())
            check_finite(f"Epoch {epoch + 1}", {"loss": sum(losses) / len(losses)}, self.model,
                         last_good=f"checkpoint/last.pt (epoch {self.epoch})" if self.epoch else "nothing saved yet")
            self.epoch = epoch + 1
            self.logger.log({"loss": sum(losses) / len(losses), "lr": self.optimizer.param_groups[0]["lr"],
                             "epoch": self.epoch, "gradient_steps": self.step, "wall_time": time.time() - start},
                            step=self.epoch, prefix="train")
            self.lr_scheduler.step()
            if self.epoch % train.save_model_freq == 0 or self.epoch == train.n_epochs:
                self.save()
        self.logger.plot({"loss": ["train/loss"], "lr": ["train/lr"]}, filename="loss.png")
        self.export_policy()
        self.logger.close()

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
