"""Every fine-tuning algorithm moves a policy pre-trained on poor demonstrations toward a known optimum.

The task (tests/toy.py) is one step with reward 1 - ||a - a*||^2: the demonstrations' return is about 0,
the optimum 1. A few seconds of fine-tuning with a fixed seed must close at least half of that gap
in deterministic evaluation; a flipped sign or a detached loss leaves the return where it was or worse.
"""

import json
import os

import hydra
import pytest
from conftest import compose_config
from toy import OPTIMUM, pretrain_toy_policy, toy_overrides

from dppo.config import validate_config

N_ITR = 8
COMMON = ["env.n_envs=8", "train.n_steps=16", f"train.n_train_itr={N_ITR}", f"train.val_freq={N_ITR}",
          "train.actor_lr=1e-3", "train.actor_lr_scheduler.warmup_steps=0",
          "train.critic_lr_scheduler.warmup_steps=0"]
ALGORITHMS = {
    "ft_ppo_diffusion_mlp": ["denoising_steps=5", "ft_denoising_steps=5", "train.batch_size=64", "model.clip_ploss_coef=0.1",
                             "model.clip_ploss_coef_base=0.1", "model.critic.mlp_dims=[32,32,32]"],
    "ft_ppo_gaussian_mlp": ["train.batch_size=64", "train.update_epochs=5", "model.clip_ploss_coef=0.1",
                            "model.critic.mlp_dims=[32,32,32]"],
    "ft_rwr_diffusion_mlp": ["denoising_steps=5", "train.batch_size=64", "train.update_epochs=4"],
    "ft_awr_diffusion_mlp": ["denoising_steps=5", "train.buffer_size=32", "train.batch_size=64", "train.replay_ratio=8",
                             "train.critic_update_ratio=1", "model.critic.mlp_dims=[32,32,32]"],
    # one-step returns are ~1, so rewards stay unscaled: Hopper's discounted returns at scale 0.01 are ~1-3 too
    "ft_dql_diffusion_mlp": ["denoising_steps=5", "train.reward_scale_const=1", "train.actor_lr=3e-4", "train.buffer_size=32", "train.batch_size=64", "train.replay_ratio=8",
                             "train.n_critic_warmup_itr=1", "model.critic.mlp_dims=[32,32,32]"],
    # IDQL improves only through the candidates its implicit policy picks for the replay: slower
    "ft_idql_diffusion_mlp": ["denoising_steps=5", "train.reward_scale_const=1", "train.n_train_itr=16",
                              "train.val_freq=16", "train.buffer_size=32", "train.batch_size=64", "train.replay_ratio=16",
                              "train.n_critic_warmup_itr=1", "train.critic_tau=0.05",
                              "model.critic_q.mlp_dims=[32,32,32]", "model.critic_v.mlp_dims=[32,32,32]"],
}


@pytest.fixture(scope="module")
def toy_policies(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy")
    return {kind: pretrain_toy_policy(directory, kind) for kind in ("diffusion", "gaussian")}


def eval_returns(run_dir) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [row["eval/episode_return"] for row in rows if "eval/episode_return" in row]


@pytest.mark.parametrize("config_name", list(ALGORITHMS))
def test_fine_tuning_moves_toward_the_optimum(config_name, toy_policies, tmp_path):
    policy = toy_policies["gaussian" if "gaussian" in config_name else "diffusion"]
    cfg = compose_config(config_name, toy_overrides(policy, tmp_path) + COMMON + ALGORITHMS[config_name])
    validate_config(cfg)
    hydra.utils.get_class(cfg._target_)(cfg).run()
    before, after = eval_returns(tmp_path)[0], eval_returns(tmp_path)[-1]
    assert before < 0.3, "the pre-trained policy imitates the poor demonstrations"
    assert after > before + 0.5 * (OPTIMUM - before), \
        f"{config_name}: eval return {before:.3f} -> {after:.3f}, expected half the gap to {OPTIMUM} closed"
