"""What every fine-tuning agent shares: vector env, model, evaluation, logging, checkpoints and resume.

A subclass writes its algorithm in `run()` (top to bottom, CleanRL style) and
lists its own training state (optimizers, schedulers, ...) in
`algorithm_state()` / `load_algorithm_state()`.
"""

import os
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from agent.eval.rollout import run_episodes
from agent.finetune.episodes import EpisodeTracker, summarize
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
from dppo.logging import MetricLogger
from dppo.runtime import prepare_run_dir, set_seed, wandb_config
from env.vector import make_vector_env

EVAL_SEED_OFFSET = 1_000_000


class FinetuneAgent:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        set_seed(cfg.seed)
        self.device = cfg.device
        resume = resolve_resume(cfg.resume, os.path.dirname(cfg.logdir))
        self.logdir = resume[1] if resume else cfg.logdir
        self.n_envs = cfg.env.n_envs
        self.act_steps = cfg.act_steps
        self.venv = make_vector_env(
            cfg.env_name, n_envs=self.n_envs, n_obs_steps=cfg.cond_steps, n_action_steps=cfg.act_steps,
            normalization_path=cfg.normalization_path, device=self.device, asynchronous=cfg.env.asynchronous,
            seed=cfg.seed, video_dir=os.path.join(self.logdir, "videos") if cfg.env.save_video else None,
        )
        self.model = hydra.utils.instantiate(cfg.model)
        self.itr = 0
        self.env_steps = 0
        self.wall_time = 0.0
        self.tracker = EpisodeTracker(self.n_envs, self.act_steps)
        self.resume_path = resume[0] if resume else None

    def start(self) -> None:
        """Call at the end of a subclass's __init__: load the resumed state, open the run dir and logger."""
        if self.resume_path is not None:
            self.load(self.resume_path)
        prepare_run_dir(self.logdir, self.cfg)
        self.logger = MetricLogger(self.logdir, wandb_cfg=wandb_config(self.cfg),
                                   config=OmegaConf.to_container(self.cfg), resume=self.resume_path is not None)
        print(f"{type(self).__name__} on {self.cfg.env_name} with {self.n_envs} envs; run dir {self.logdir}")

    # ---- environment -------------------------------------------------------------------------
    def reset_envs(self) -> torch.Tensor:
        """Reset every env with seeds derived from the iteration, so a resumed run sees the same episodes."""
        self.tracker = EpisodeTracker(self.n_envs, self.act_steps)
        return self.venv.reset(seed=self.cfg.seed + self.itr * self.n_envs)

    def evaluate_and_log(self) -> bool:
        """Every `val_freq` iterations (and before the first): evaluate, log `eval/*` and redraw the curves.

        Returns whether it evaluated (the envs then need a reset).
        """
        val_freq = self.cfg.train.val_freq
        if val_freq is None or self.itr % val_freq != 0:
            return False
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
        """Deterministic sampling until every env has finished one episode; returns eval metrics.

        The envs are reset with evaluation seeds first.
        """
        episodes = run_episodes(
            self.venv, lambda obs: self.model.sample({"state": obs}, deterministic=True).actions,
            n_episodes=self.n_envs, act_steps=self.act_steps,
            seed=self.cfg.seed + EVAL_SEED_OFFSET + self.itr * self.n_envs,
        )
        return summarize(episodes)

    # ---- checkpoints -------------------------------------------------------------------------
    def algorithm_state(self) -> dict:
        raise NotImplementedError

    def load_algorithm_state(self, state: dict) -> None:
        raise NotImplementedError

    def save(self) -> None:
        state = {
            "itr": self.itr,
            "env_steps": self.env_steps,
            "wall_time": self.wall_time,
            "model": self.model.state_dict(),
            "algorithm": self.algorithm_state(),
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        if self.itr % self.cfg.train.save_model_freq == 0:
            save_checkpoint(checkpoint_path(self.logdir, self.itr), state)
        save_checkpoint(last_checkpoint_path(self.logdir), state)

    def load(self, path: str) -> None:
        state = load_checkpoint(path)
        load_state_dict_checked(self.model, state["model"], what=path)
        self.load_algorithm_state(state["algorithm"])
        set_rng_state(state["rng"])
        self.itr, self.env_steps, self.wall_time = state["itr"], state["env_steps"], state["wall_time"]
        print(f"Resumed from {path} at iteration {self.itr}")

    def plot_curves(self) -> None:
        self.logger.plot({
            "reward": ["train/episode_return", "eval/episode_return"],
            "loss": ["train/loss"],
            "pg_loss": ["train/pg_loss"],
            "value_loss": ["train/value_loss"],
        })

    def finish(self) -> None:
        self.plot_curves()
        self.logger.close()
        self.venv.close()


class Timer:
    """Wall-clock seconds since construction or the last `lap()`."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
