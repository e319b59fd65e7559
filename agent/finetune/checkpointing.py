"""Checkpoints of a fine-tuning run (a part of FinetuneAgent, agent/finetune/base.py): every nn.Module attribute by
name, optimizers, LR schedules, reward scaling, replay, iteration counters and every rank's RNG state, written by
rank 0 atomically; loading restores all of it.
"""

from omegaconf import OmegaConf
from torch import nn

from dppo.checkpoint import (
    FINETUNE_CHECKPOINT_FORMAT,
    checkpoint_path,
    last_checkpoint_path,
    load_checkpoint,
    load_state_dict_checked,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dppo.config import ConfigError
from dppo.distributed import gather_objects


class Checkpointing:
    """Saves and loads the whole state of a run (checkpointed_modules, save, load)."""

    def checkpointed_modules(self) -> dict[str, nn.Module]:
        """Every nn.Module attribute of the agent by name: the policy `model`, critics, target networks."""
        return {name: value for name, value in vars(self).items() if isinstance(value, nn.Module)}

    def save(self) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG state (a collective: every rank calls it)."""
        rank_rngs = gather_objects(rng_state(), self.rank)
        if not self.rank.is_main:
            return
        state = {
            "format": FINETUNE_CHECKPOINT_FORMAT,
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
        if state.get("format") != FINETUNE_CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} was written before policies and algorithms were split (checkpoint format "
                              f"{state.get('format', 1)}, this code reads {FINETUNE_CHECKPOINT_FORMAT}): start a new run from "
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
