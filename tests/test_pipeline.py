"""End-to-end runs of the Hydra configs on CPU with tiny networks: pre-train, evaluate, fine-tune, resume."""

import json
import os
import subprocess
import sys

import hydra
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, compose_config, finetune_overrides, run_config, write_hopper_dataset

from dppo.config import ConfigError, startup_error_line, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_METRICS = {"train/env_steps_per_s", "train/rollout_time", "train/update_time", "eval/eval_time",
                "train/wall_time"}


def startup_error(config_name, overrides) -> str:
    """The one line that script/run.py prints when this config fails at start-up."""
    with pytest.raises(Exception) as info:
        run_config(config_name, overrides)
    return startup_error_line(info.value)


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_pretraining_writes_checkpoint_metrics_and_curve(pretrained):
    dataset_dir, run_dir = pretrained
    for path in ("checkpoint/state_2.pt", "checkpoint/last.pt", "checkpoint/policy.pt", "metrics.jsonl",
                 "metrics.csv", "loss.png", "config.yaml", "versions.json"):
        assert os.path.getsize(run_dir / path) > 0, path
    assert (dataset_dir / "normalization.npz").exists()
    assert (dataset_dir / "pretrained" / "diffusion_mlp.pt").exists()
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2]


def pretrain_tiny_policy(kind: str, root):
    """A tiny `kind` (gaussian, flow) policy cloned for one epoch on a tiny dataset; returns the dataset dir
    whose pretrained/<kind>_mlp.pt is the policy."""
    dataset_dir = root / "data"
    write_hopper_dataset(dataset_dir)
    run_config(f"pre_{kind}_mlp", TINY_MODEL + [
        f"dataset_dir={dataset_dir}", f"logdir={root / 'bc'}", "train.n_epochs=1", "train.batch_size=16",
        f"export_policy_path={dataset_dir}/pretrained/{kind}_mlp.pt",
    ])
    return dataset_dir


def evaluate_tiny(config_name: str, dataset_dir, logdir, extra=()) -> dict:
    return run_config(config_name, ["wandb=null", "device=cpu", f"dataset_dir={dataset_dir}", f"logdir={logdir}",
                                    "env.n_envs=2", "env.asynchronous=false", "n_episodes=2", *extra])


def test_gaussian_pretraining_and_evaluation(tmp_path):
    dataset_dir = pretrain_tiny_policy("gaussian", tmp_path)
    results = evaluate_tiny("eval_gaussian_mlp", dataset_dir, tmp_path / "eval")
    assert results["n_episodes"] == 2


def test_evaluation_of_pretrained_policy(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    results = run_config("eval_diffusion_mlp", [
        "wandb=null", "device=cpu", f"dataset_dir={dataset_dir}", f"logdir={tmp_path}", "env.n_envs=2",
        "env.asynchronous=false", "n_episodes=3",
    ])
    assert results["n_episodes"] == 4  # ceil(3 / 2) episodes in each of the 2 envs
    assert np.isfinite(results["episode_return"])
    assert json.load(open(tmp_path / "results.json"))["n_episodes"] == 4


def test_evaluation_of_a_pretraining_runs_checkpoint_equals_that_of_its_exported_policy(pretrained, tmp_path):
    dataset_dir, run_dir = pretrained
    common = ["wandb=null", "device=cpu", f"dataset_dir={dataset_dir}", "env.n_envs=2", "env.asynchronous=false",
              "n_episodes=2"]
    from_state = run_config("eval_diffusion_mlp", common + [f"logdir={tmp_path / 'state'}",
                                                            f"checkpoint_path={run_dir / 'checkpoint' / 'last.pt'}"])
    from_policy = run_config("eval_diffusion_mlp", common + [f"logdir={tmp_path / 'policy'}",
                                                             f"checkpoint_path={run_dir / 'checkpoint' / 'policy.pt'}"])
    assert from_state["episode_return"] == from_policy["episode_return"]


def test_finetuning_two_iterations(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    run_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, tmp_path, n_train_itr=2))
    rows = read_metrics(tmp_path)
    train = [r for r in rows if "train/pg_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert train[-1]["train/env_steps"] > 0
    assert any("eval/episode_return" in r for r in rows)
    assert os.path.getsize(tmp_path / "curves.png") > 0
    assert os.path.exists(tmp_path / "checkpoint" / "last.pt")


REPLAY = ["train.buffer_size=8", "train.replay_ratio=2", "train.n_critic_warmup_itr=1"]
# DSRL: the first iteration acts as the BC policy and fills the replay, the second learns (8 / 2 rounds of 2 steps).
DSRL = ["train.init_rollout_steps=8", "train.utd=2", "train.noise_critic_grad_steps=1", "train.buffer_size=16",
        "noise_actor.mlp_dims=[32,32,32]"]
# Every algorithm x policy preset: 2 iterations on Hopper from a tiny pre-trained policy of its kind.
PAIRS = {
    "ft_ppo_diffusion_mlp": ["ft_denoising_steps=4"],
    "ft_ppo_flow_mlp": ["model.noise_network.mlp_dims=[16,16,16]"],
    "ft_reinflow_flow_mlp": ["model.noise_network.mlp_dims=[16,16]"],
    "ft_ppo_gaussian_mlp": [],
    "ft_rwr_diffusion_mlp": [],
    "ft_rwr_flow_mlp": [],
    "ft_awr_diffusion_mlp": ["train.buffer_size=8", "train.replay_ratio=2"],
    "ft_awr_flow_mlp": ["train.buffer_size=8", "train.replay_ratio=2"],
    "ft_dql_diffusion_mlp": REPLAY,
    "ft_dql_flow_mlp": REPLAY,
    "ft_idql_diffusion_mlp": REPLAY + ["critic_q.mlp_dims=[32,32,32]", "critic_v.mlp_dims=[32,32,32]"],
    "ft_idql_flow_mlp": REPLAY + ["critic_q.mlp_dims=[32,32,32]", "critic_v.mlp_dims=[32,32,32]"],
    "ft_dsrl_diffusion_mlp": DSRL,
    "ft_dsrl_flow_mlp": DSRL + ["train.variant=sac"],
}


@pytest.fixture(scope="module")
def tiny_policy_dirs(pretrained, tmp_path_factory):
    """{policy kind: dataset dir holding pretrained/<kind>_mlp.pt}."""
    dirs = {"diffusion": pretrained[0]}
    for kind in ("flow", "gaussian"):
        dirs[kind] = pretrain_tiny_policy(kind, tmp_path_factory.mktemp(kind))
    return dirs


@pytest.mark.parametrize("config_name", list(PAIRS))
def test_every_algorithm_and_policy_fine_tunes_two_iterations_on_hopper(tiny_policy_dirs, tmp_path, config_name):
    kind = next(kind for kind in ("diffusion", "flow", "gaussian") if f"_{kind}_" in config_name)
    overrides = TINY_MODEL + [
        f"dataset_dir={tiny_policy_dirs[kind]}", f"logdir={tmp_path}", "env.n_envs=2", "env.asynchronous=false",
        "train.n_steps=8", "train.n_train_itr=2", "train.batch_size=8", "train.eval_interval=2",
        "train.reset_at_iteration=true",
    ]
    if kind == "diffusion":
        overrides.append("denoising_steps=10")
    if "_idql_" not in config_name and "_rwr_" not in config_name:
        overrides.append("critic.mlp_dims=[32,32,32]")
    run_config(config_name, overrides + PAIRS[config_name])
    rows = read_metrics(tmp_path)
    train = [r for r in rows if "train/env_steps" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert train[-1]["train/env_steps"] > train[0]["train/env_steps"] > 0
    assert all(np.isfinite(v) for r in train for k, v in r.items() if k.endswith("loss"))
    assert [r["step"] for r in rows if "eval/episode_return" in r] == [0, 2]
    assert os.path.exists(tmp_path / "checkpoint" / "last.pt")


def test_dsrl_refuses_the_gaussian_policy_in_one_line(tiny_policy_dirs, tmp_path):
    """DSRL steers a chain's initial noise; the Gaussian policy has none: one line that names the policies to use."""
    overrides = TINY_MODEL + [f"dataset_dir={tiny_policy_dirs['gaussian']}", f"logdir={tmp_path}", "env.n_envs=1",
                              "env.asynchronous=false", "policy=gaussian"]
    with pytest.raises(ValueError) as error:
        run_config("ft_dsrl_diffusion_mlp", overrides)
    assert startup_error_line(error.value) == startup_error_line(error.value).splitlines()[0]
    assert "GaussianModel draws its chunk without one: use policy=diffusion or policy=flow" in str(error.value)


def test_ddim_without_ddim_steps_gets_one_line():
    cfg = compose_config("ft_ppo_diffusion_mlp", ["use_ddim=true"])
    with pytest.raises(ConfigError, match="use_ddim=true needs ddim_steps"):
        validate_config(cfg)


def test_resume_reproduces_uninterrupted_run(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    straight, resumed = tmp_path / "straight", tmp_path / "runs" / "2026-01-01_00-00-00_42"
    run_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, straight, n_train_itr=4))
    run_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, resumed, n_train_itr=2))
    # resume=true continues the latest run beside the new run's logdir
    unused = tmp_path / "runs" / "2026-01-01_00-10-00_42"
    run_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, unused, n_train_itr=4) + ["resume=true"])
    assert not unused.exists()

    def deterministic(rows):
        return [{k: v for k, v in row.items() if k not in TIME_METRICS} for row in rows]

    expected, actual = deterministic(read_metrics(straight)), deterministic(read_metrics(resumed))
    assert [r["step"] for r in actual] == [r["step"] for r in expected]
    for want, got in zip(expected, actual):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (want["step"], key)


def test_resume_auto_starts_fresh_then_continues_from_the_same_command_line(pretrained, tmp_path):
    """resume=auto with a fixed logdir: the first launch starts fresh, the same command then continues it (the
    requeue of a cluster job), and a finished run relaunched logs nothing twice."""
    dataset_dir, _ = pretrained
    run_dir = tmp_path / "fixed"
    straight = tmp_path / "straight"
    run_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, straight, n_train_itr=4))
    run_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, run_dir, n_train_itr=2) + ["resume=auto"])
    assert [row["step"] for row in read_metrics(run_dir) if "train/loss" in row] == [1, 2]
    for _ in range(2):  # the relaunch continues to 4; a second relaunch finds the run done
        run_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, run_dir, n_train_itr=4) + ["resume=auto"])
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows if "train/loss" in row] == [1, 2, 3, 4]
    expected = [row for row in read_metrics(straight) if "train/loss" in row]
    for want, got in zip(expected, [row for row in rows if "train/loss" in row]):
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-5, abs=1e-7)


def test_finetuning_rejects_checkpoint_of_another_architecture(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    overrides = finetune_overrides(dataset_dir, tmp_path, n_train_itr=1)
    overrides[0] = "model.network.mlp_dims=[64,64,64]"
    message = startup_error("ft_ppo_diffusion_mlp", overrides)
    assert message.startswith("ValueError: Checkpoint ")
    assert "'mlp.input_layer.weight' has shape (32, 39) but the DiffusionMLP expects (64, 39)" in message


def test_ft_denoising_steps_above_denoising_steps_is_rejected_at_start_up():
    cfg = compose_config("ft_ppo_diffusion_mlp", ["denoising_steps=10", "ft_denoising_steps=12"])
    with pytest.raises(ConfigError, match="ft_denoising_steps=12 must be in 1..10"):
        validate_config(cfg)


def test_missing_dataset_names_the_command_that_makes_it(tmp_path):
    message = startup_error("pre_diffusion_mlp", TINY_MODEL + [f"dataset_dir={tmp_path}", f"logdir={tmp_path / 'run'}"])
    assert message.startswith("FileNotFoundError: Dataset ")
    assert message.endswith("make it with `python script/dataset/make_gym_demos.py --task hopper`.")


def test_missing_pretrained_policy_names_the_command_that_makes_it(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    overrides = finetune_overrides(dataset_dir, tmp_path, n_train_itr=1) + [f"base_policy_path={tmp_path}/none.pt"]
    message = startup_error("ft_ppo_diffusion_mlp", overrides)
    assert message.startswith(f"FileNotFoundError: Pre-trained policy {tmp_path}/none.pt not found: make it with `python")


def test_dataset_of_another_task_is_rejected(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    message = startup_error("pre_diffusion_mlp", TINY_MODEL + ["task=walker2d", f"dataset_dir={dataset_dir}",
                                                               f"logdir={tmp_path}"])
    assert "has obs dim 11 but the config says obs_dim=17" in message


def test_unknown_task_gets_one_line():
    result = subprocess.run([sys.executable, "script/run.py", "--config-name=pre_diffusion_mlp", "task=hoper"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Unknown task 'hoper': use one of ")
    assert ", hopper, " in lines[0] and ", lift, " in lines[0]


def test_finetuning_options_ddim_bc_value_clipping_critic_warmup(pretrained, tmp_path):
    dataset_dir, _ = pretrained
    overrides = finetune_overrides(dataset_dir, tmp_path, n_train_itr=2) + [
        "use_ddim=true", "ddim_steps=5", "ft_denoising_steps=5", "train.use_bc_loss=true", "train.bc_coef=0.1",
        "train.clip_vloss_coef=0.2", "train.n_critic_warmup_itr=1", "train.max_grad_norm=1.0",
        "train.reward_scale_running=false",
    ]
    cfg = compose_config("ft_ppo_diffusion_mlp", overrides)
    agent = hydra.utils.get_class(cfg._target_)(cfg)
    actor_before = [p.detach().clone() for p in agent.model.actor_ft.parameters()]
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    agent.cfg.train.n_train_itr = 1
    agent.run()
    assert all(bool((a == b).all()) for a, b in zip(actor_before, agent.model.actor_ft.parameters())), \
        "the actor must not step during critic warm-up"
    assert any(bool((a != b).any()) for a, b in zip(critic_before, agent.critic.parameters()))
    rows = [r for r in read_metrics(tmp_path) if "train/bc_loss" in r]
    assert rows[-1]["train/bc_loss"] != 0


def test_flow_pretraining_and_evaluation_with_one_step(tiny_policy_dirs, tmp_path):
    results = evaluate_tiny("eval_flow_mlp", tiny_policy_dirs["flow"], tmp_path / "eval",
                            ["+model_overrides.inference_steps=1"])
    assert results["n_episodes"] == 2
    with open(tmp_path / "eval" / "config.yaml") as f:
        assert "inference_steps: 1" in f.read()


def test_evaluation_of_a_fine_tuned_idql_checkpoint_chooses_by_q(tiny_policy_dirs, tmp_path):
    """eval_* on an IDQL fine-tuning checkpoint acts as IDQL does: the best of 20 candidates by its critics."""
    run_dir = tmp_path / "ft"
    run_config("ft_idql_diffusion_mlp", TINY_MODEL + REPLAY + [
        f"dataset_dir={tiny_policy_dirs['diffusion']}", f"logdir={run_dir}", "env.n_envs=2", "env.asynchronous=false",
        "train.n_steps=8", "train.n_train_itr=1", "train.batch_size=8", "train.eval_interval=null", "denoising_steps=10",
        "critic_q.mlp_dims=[32,32,32]", "critic_v.mlp_dims=[32,32,32]"])
    from agent.eval.eval_agent import load_policy
    from model.rl.idql import CandidateSelector

    actor, _ = load_policy(str(run_dir / "checkpoint" / "last.pt"), "cpu")
    assert isinstance(actor, CandidateSelector) and actor.eval_num_sample == 20
    results = evaluate_tiny("eval_diffusion_mlp", tiny_policy_dirs["diffusion"], tmp_path / "eval",
                            [f"checkpoint_path={run_dir / 'checkpoint' / 'last.pt'}"])
    assert results["n_episodes"] == 2


def test_evaluation_of_a_fine_tuned_dsrl_checkpoint_steers_with_its_noise_actor(tiny_policy_dirs, tmp_path):
    """eval_* on a DSRL checkpoint acts as DSRL does: the frozen policy decodes the noise actor's mean noise."""
    run_dir = tmp_path / "ft"
    run_config("ft_dsrl_diffusion_mlp", TINY_MODEL + DSRL + [
        f"dataset_dir={tiny_policy_dirs['diffusion']}", f"logdir={run_dir}", "env.n_envs=2", "env.asynchronous=false",
        "train.n_steps=8", "train.n_train_itr=2", "train.batch_size=8", "train.eval_interval=null", "denoising_steps=10",
        "critic.mlp_dims=[32,32,32]"])
    from agent.eval.eval_agent import load_policy
    from model.rl.dsrl import NoiseSteering

    actor, _ = load_policy(str(run_dir / "checkpoint" / "last.pt"), "cpu")
    saved = torch.load(run_dir / "checkpoint" / "last.pt", weights_only=True)["modules"]["noise_actor"]
    assert isinstance(actor, NoiseSteering) and actor.action_magnitude == 1.5
    assert all(torch.equal(actor.actor.state_dict()[key], value) for key, value in saved.items())
    results = evaluate_tiny("eval_diffusion_mlp", tiny_policy_dirs["diffusion"], tmp_path / "eval",
                            [f"checkpoint_path={run_dir / 'checkpoint' / 'last.pt'}"])
    assert results["n_episodes"] == 2


NEW_TASK_FILE = """# @package _global_
env_name: pendulum
env:
  family: gym
  id: InvertedPendulum-v5
  kwargs:
    max_episode_steps: ${{max_episode_steps}}
obs_dim: 4
action_dim: 1
max_episode_steps: 1000
dataset_dir: {dataset_dir}
make_dataset_command: python script/dataset/make_gym_demos.py --task pendulum
"""


def test_a_new_gymnasium_task_needs_only_its_task_file(tmp_path):
    """A task file naming a gymnasium id (here in an extra config dir, as a user's cfg/task/<name>.yaml would be)
    is all pre-training, evaluation and fine-tuning need."""
    (tmp_path / "cfg" / "task").mkdir(parents=True)
    dataset_dir = tmp_path / "data"
    (tmp_path / "cfg" / "task" / "pendulum.yaml").write_text(NEW_TASK_FILE.format(dataset_dir=dataset_dir))
    rng = np.random.default_rng(0)
    dataset_dir.mkdir()
    np.savez(dataset_dir / "train.npz", states=rng.normal(size=(60, 4)).astype(np.float32),
             actions=rng.uniform(-3, 3, size=(60, 1)).astype(np.float32), traj_lengths=np.array([30, 30]))
    task = [f"hydra.searchpath=[file://{tmp_path / 'cfg'}]", "task=pendulum"]
    run_config("pre_diffusion_mlp", task + TINY_MODEL + [
        f"logdir={tmp_path / 'bc'}", "train.n_epochs=1", "train.batch_size=16",
        f"export_policy_path={dataset_dir}/pretrained/diffusion_mlp.pt"])
    results = evaluate_tiny("eval_diffusion_mlp", dataset_dir, tmp_path / "eval", extra=task)
    assert results["n_episodes"] == 2 and results["episode_length"] < 1000  # the pendulum falls
    run_config("ft_ppo_diffusion_mlp", task + finetune_overrides(dataset_dir, tmp_path / "ft", n_train_itr=1))
    assert any("train/pg_loss" in row for row in read_metrics(tmp_path / "ft"))


@pytest.mark.parametrize("config_name", ["ft_dsrl_diffusion_mlp", "ft_dsrl_flow_mlp"])
@pytest.mark.parametrize("task, mlp_dims, action_magnitude, train_freq, init_rollout_steps, ddim_steps", [
    ("hopper", [128, 128, 128], 1.5, 2, 2001, 5),  # the reference's cfg/gym/dsrl_hopper.yaml
    ("walker2d", [2048, 2048, 2048], 2.5, 2, 2001, 5),  # its cfg/gym/dsrl_walker.yaml
    ("halfcheetah", [1024, 1024, 1024], 1.5, 2, 2001, 5),  # its cfg/gym/dsrl_halfcheetah.yaml
    ("can", [2048, 2048, 2048], 1.5, 1, 1501, 8),  # its cfg/robomimic/dsrl_can.yaml
])
def test_dsrl_presets_compose_with_the_reference_settings(config_name, task, mlp_dims, action_magnitude, train_freq,
                                                          init_rollout_steps, ddim_steps):
    cfg = compose_config(config_name, [f"task={task}"])
    validate_config(cfg)
    assert cfg._target_ == "agent.finetune.dsrl.DSRLAgent" and cfg.train.variant == "na"
    assert cfg.env.n_envs == 4 and cfg.train.gamma == 0.99  # DSRL's, not the task's DPPO settings
    assert cfg.critic.mlp_dims == cfg.noise_actor.mlp_dims == mlp_dims
    assert (cfg.train.train_freq, cfg.train.init_rollout_steps) == (train_freq, init_rollout_steps)
    assert (cfg.train.utd, cfg.train.batch_size, cfg.train.action_magnitude) == (20, 256, action_magnitude)
    if "_diffusion_" in config_name:
        assert cfg.model.use_ddim and cfg.model.ddim_steps == ddim_steps
    else:
        assert cfg.model._target_ == "model.flow.noisy_flow.NoisyFlowPolicy"
