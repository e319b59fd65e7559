"""Every fine-tuning algorithm moves a policy pre-trained on poor demonstrations toward a known optimum.

The task (tests/toy.py) is one step with reward 1 - ||a - a*||^2: the demonstrations' return is about 0,
the optimum 1. A few seconds of fine-tuning with a fixed seed must close at least half of that gap
in deterministic evaluation; a flipped sign or a detached loss leaves the return where it was or worse.
"""

import json
import os

import hydra
import pytest
import torch
from conftest import compose_config
from toy import OPTIMUM, pretrain_toy_policy, toy_overrides

from dppo.config import ConfigError, validate_config

N_ITR = 8
COMMON = ["env.n_envs=8", "train.n_steps=16", f"train.n_train_itr={N_ITR}", f"train.val_freq={N_ITR}",
          "train.actor_lr=1e-3", "train.actor_lr_scheduler.warmup_steps=0",
          "train.critic_lr_scheduler.warmup_steps=0"]
ALGORITHMS = {
    "ft_ppo_diffusion_mlp": ["denoising_steps=5", "ft_denoising_steps=5", "train.batch_size=64", "train.clip_ploss_coef=0.1",
                             "train.clip_ploss_coef_base=0.1", "critic.mlp_dims=[32,32,32]"],
    "ft_ppo_gaussian_mlp": ["train.batch_size=64", "train.update_epochs=5", "train.clip_ploss_coef=0.1",
                            "critic.mlp_dims=[32,32,32]"],
    "ft_ppo_flow_mlp": ["train.batch_size=64", "train.clip_ploss_coef=0.1", "critic.mlp_dims=[32,32,32]",
                        "model.noise_network.mlp_dims=[16,16,16]"],
    "ft_rwr_diffusion_mlp": ["denoising_steps=5", "train.batch_size=64", "train.update_epochs=4"],
    "ft_awr_diffusion_mlp": ["denoising_steps=5", "train.buffer_size=32", "train.batch_size=64", "train.replay_ratio=8",
                             "train.critic_update_ratio=1", "critic.mlp_dims=[32,32,32]"],
    # one-step returns are ~1, so rewards stay unscaled: Hopper's discounted returns at scale 0.01 are ~1-3 too
    "ft_dql_diffusion_mlp": ["denoising_steps=5", "train.reward_scale_const=1", "train.actor_lr=3e-4",
                             "train.buffer_size=32", "train.batch_size=64", "train.replay_ratio=8",
                             "train.n_critic_warmup_itr=1", "critic.mlp_dims=[32,32,32]"],
    # IDQL improves only through the candidates its implicit policy picks for the replay: slower
    "ft_idql_diffusion_mlp": ["denoising_steps=5", "train.reward_scale_const=1", "train.n_train_itr=16",
                              "train.val_freq=16", "train.buffer_size=32", "train.batch_size=64", "train.replay_ratio=16",
                              "train.n_critic_warmup_itr=1", "train.critic_tau=0.05",
                              "critic_q.mlp_dims=[32,32,32]", "critic_v.mlp_dims=[32,32,32]"],
}


@pytest.fixture(scope="module")
def toy_policies(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy")
    return {kind: pretrain_toy_policy(directory, kind) for kind in ("diffusion", "flow", "gaussian")}


def eval_returns(run_dir) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [row["eval/episode_return"] for row in rows if "eval/episode_return" in row]


TIME_METRICS = {"train/env_steps_per_s", "train/rollout_time", "train/update_time", "eval/eval_time",
                "train/wall_time"}


def run_toy(config_name, policy, run_dir, extra):
    cfg = compose_config(config_name, toy_overrides(policy, run_dir) + COMMON + ALGORITHMS[config_name] + extra)
    validate_config(cfg)
    agent = hydra.utils.get_class(cfg._target_)(cfg)
    agent.run()
    return agent


@pytest.mark.parametrize("config_name", list(ALGORITHMS))
def test_fine_tuning_moves_toward_the_optimum(config_name, toy_policies, tmp_path):
    kind = next(kind for kind in ("gaussian", "flow", "diffusion") if kind in config_name)
    run_toy(config_name, toy_policies[kind], tmp_path, [])
    before, after = eval_returns(tmp_path)[0], eval_returns(tmp_path)[-1]
    assert before < 0.3, "the pre-trained policy imitates the poor demonstrations"
    assert after > before + 0.5 * (OPTIMUM - before), \
        f"{config_name}: eval return {before:.3f} -> {after:.3f}, expected half the gap to {OPTIMUM} closed"


def test_off_policy_resume_brings_the_replay_buffer_back(toy_policies, tmp_path):
    """DQL for 4 iterations straight equals 2 iterations, then a resumed run to 4: same replay, same metrics."""
    extra = ["train.val_freq=2", "train.reset_at_iteration=true"]
    policy = toy_policies["diffusion"]
    straight = run_toy("ft_dql_diffusion_mlp", policy, tmp_path / "straight", extra + ["train.n_train_itr=4"])
    run_toy("ft_dql_diffusion_mlp", policy, tmp_path / "resumed", extra + ["train.n_train_itr=2"])
    resumed = run_toy("ft_dql_diffusion_mlp", policy, tmp_path / "other",
                      extra + ["train.n_train_itr=4", f"resume={tmp_path / 'resumed'}"])
    assert resumed.logdir == str(tmp_path / "resumed")
    want, got = straight.replay.ordered(), resumed.replay.ordered()
    for key in ("actions", "rewards", "terminated", "ends"):
        assert torch.equal(got[key], want[key]), key
    for key in ("obs", "next_obs"):
        assert torch.equal(got[key]["state"], want[key]["state"]), key

    def rows(run_dir):
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k not in TIME_METRICS} for line in f]

    expected, actual = rows(tmp_path / "straight"), rows(tmp_path / "resumed")
    assert [r["step"] for r in actual] == [r["step"] for r in expected]
    for want, got in zip(expected, actual):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (want["step"], key)


def test_ppo_drops_a_leftover_minibatch_of_one_sample(toy_policies, tmp_path):
    """3 envs x 7 steps = 21 samples in batches of 5: 4 minibatches per epoch; the 21st sample would give NaN."""
    agent = run_toy("ft_ppo_diffusion_mlp", toy_policies["diffusion"], tmp_path,
                    ["env.n_envs=3", "train.n_steps=7", "train.batch_size=5", "train.n_train_itr=2",
                     "train.update_epochs=2", "train.target_kl=null"])
    assert all(torch.isfinite(p).all() for p in agent.model.parameters())
    with open(tmp_path / "metrics.jsonl") as f:
        train = [json.loads(line) for line in f if "train/minibatch_updates" in line]
    assert [row["train/minibatch_updates"] for row in train] == [8, 8]


def test_ppo_batch_larger_than_an_iteration_is_rejected(toy_policies, tmp_path):
    cfg = compose_config("ft_ppo_diffusion_mlp", toy_overrides(toy_policies["diffusion"], tmp_path) + COMMON
                         + ALGORITHMS["ft_ppo_diffusion_mlp"] + ["train.batch_size=1000"])
    with pytest.raises(ConfigError, match="train.batch_size=1000 exceeds the 128 samples"):
        hydra.utils.get_class(cfg._target_)(cfg)


def test_evaluation_takes_its_own_number_of_episodes(toy_policies, tmp_path):
    run_toy("ft_ppo_diffusion_mlp", toy_policies["diffusion"], tmp_path,
            ["train.n_train_itr=1", "train.val_freq=1", "train.n_eval_episodes=20"])
    with open(tmp_path / "metrics.jsonl") as f:
        evals = [json.loads(line) for line in f if "eval/n_episodes" in line]
    assert [row["eval/n_episodes"] for row in evals] == [24, 24]  # ceil(20 / 8 envs) = 3 episodes in each env
