"""Evaluate a policy checkpoint: mean/std return over parallel episodes, optional video.

Works with every checkpoint the project writes; each carries the config of its model:
- `policy.pt` of pre-training (EMA denoiser weights + `model_config`),
- `state_<epoch>.pt` of pre-training (its EMA weights are evaluated),
- `state_<itr>.pt` / `last.pt` of fine-tuning (the whole fine-tuned model).
The policy acts as its algorithm does: `act` when deterministic (IDQL: the best of its
candidates by Q), `explore` otherwise.
"""

import json
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from agent.eval.episodes import summarize
from agent.eval.rollout import run_episodes
from dppo.checkpoint import FINETUNE_CHECKPOINT_FORMAT, load_checkpoint, load_state_dict_checked
from dppo.logging import MetricLogger
from dppo.runtime import env_seed, prepare_run_dir, set_seed, wandb_config
from env.vector import make_task_vector_env
from model.common.pretrained import denoiser_weights


def load_policy(path: str, device: str, overrides: DictConfig | dict | None = None):
    """The actor of a checkpoint and its model config: the policy built from the checkpoint's own model config
    (with `overrides` merged in, e.g. {"inference_steps": 1} for a flow policy) with its weights loaded; for a
    fine-tuning checkpoint, as its algorithm acts (`evaluation_actor`: IDQL chooses among candidates by Q)."""
    state = load_checkpoint(path)
    pretraining_state = "ema" in state and "config" in state  # checkpoint/state_<epoch>.pt of a pre-training run
    finetuned = "model_config" not in state and not pretraining_state and "model" in state.get("config", {})
    if "model_config" in state:
        model_cfg = state["model_config"]
    elif pretraining_state:
        model_cfg = state["config"]["model"]
    elif finetuned:
        if state.get("format") != FINETUNE_CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is a fine-tuning checkpoint of format {state.get('format', 1)}, written before "
                             f"policies and algorithms were split; this code reads format {FINETUNE_CHECKPOINT_FORMAT}: "
                             "evaluate it with the code that wrote it, or fine-tune anew.")
        model_cfg = state["config"]["model"]
    else:
        raise ValueError(f"Checkpoint {path} carries no model config: evaluate a checkpoint written by this project.")
    model_cfg = OmegaConf.merge(OmegaConf.create(model_cfg), overrides or {})
    model_cfg.device = device
    if "network_path" in model_cfg:
        model_cfg.network_path = None  # the checkpoint holds every weight
    model = hydra.utils.instantiate(model_cfg)
    if not finetuned:
        load_state_dict_checked(model.network, denoiser_weights(state), what=path)
        return model.eval(), model_cfg
    load_state_dict_checked(model, state["modules"]["model"], what=path)
    run_cfg = OmegaConf.create(state["config"])
    agent_class = hydra.utils.get_class(run_cfg._target_)
    return agent_class.evaluation_actor(model.eval(), run_cfg, state["modules"], device), model_cfg


class EvalAgent:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        set_seed(cfg.seed)
        self.model, model_cfg = load_policy(cfg.checkpoint_path, cfg.device, cfg.get("model_overrides"))
        self.venv = make_task_vector_env(
            cfg.env, n_envs=cfg.env.n_envs, cond_steps=model_cfg.cond_steps, act_steps=cfg.act_steps,
            normalization_path=cfg.normalization_path, device=cfg.device, asynchronous=cfg.env.asynchronous,
            seed=env_seed(cfg.seed, "build"), video_dir=os.path.join(cfg.logdir, "videos") if cfg.env.save_video else None,
        )
        prepare_run_dir(cfg.logdir, cfg)
        self.logger = MetricLogger(cfg.logdir, wandb_cfg=wandb_config(cfg), config=OmegaConf.to_container(cfg))

    def run(self) -> dict:
        cfg = self.cfg
        episodes = run_episodes(
            self.venv, self.model.act if cfg.deterministic else lambda obs: self.model.explore(obs)[0],
            n_episodes=cfg.n_episodes, act_steps=cfg.act_steps, seed=env_seed(cfg.seed, "eval"),
        )
        results = summarize(episodes)
        results["checkpoint_path"] = os.path.abspath(cfg.checkpoint_path)
        results["deterministic"] = bool(cfg.deterministic)
        self.logger.log({k: v for k, v in results.items() if isinstance(v, (int, float))}, step=0, prefix="eval")
        with open(os.path.join(cfg.logdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        success = f", success rate {results['success_rate']:.2f}" if "success_rate" in results else ""
        print(f"{results['n_episodes']} episodes: return {results['episode_return']:.1f} "
              f"+- {results['episode_return_std']:.1f}{success}; results in {cfg.logdir}/results.json")
        self.logger.close()
        self.venv.close()
        return results
