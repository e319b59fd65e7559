"""The runner of the original DPPO code (script/reference/run_original.py) and what it rests on: the project's
checkpoints (diffusion, Gaussian) under the original's names (strict), the original's env contract rebuilt on
gymnasium, the Gaussian PPO config written for the original with this project's settings, and, when a checkout of the
original is present (DPPO_ORIGINAL), one short iteration of its agent and equal samples of both codes from the same
weights and noise."""

import argparse
import csv
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIR = os.path.join(REPO, "script", "reference")
sys.path.insert(0, REFERENCE_DIR)

from compare_original import (  # noqa: E402
    bisect_rows,
    original_rows,
    probe_difference,
    project_config,
    project_policy,
    summary_line,
)
from omegaconf import OmegaConf  # noqa: E402
from original_env import LowdimNormalization, MultiStep, OldGymApi, SequentialVectorEnv  # noqa: E402
from original_weights import PROBE_ATOL, PROBE_SEED, original_actor_state, original_gaussian_state  # noqa: E402
from run_original import GAUSSIAN_CONFIG  # noqa: E402

from model.common.gaussian import GaussianMLP, GaussianModel  # noqa: E402
from model.diffusion.mlp import DiffusionMLP  # noqa: E402

ORIGINAL = os.environ.get("DPPO_ORIGINAL")
HAS_ORIGINAL = ORIGINAL is not None and os.path.isfile(
    os.path.join(ORIGINAL, "agent", "finetune", "train_ppo_diffusion_agent.py"))
needs_original = pytest.mark.skipif(
    not HAS_ORIGINAL, reason="no checkout of the original DPPO code: set DPPO_ORIGINAL to a directory made by "
                             "`git --git-dir=<irom-lab/dppo git dir> archive 7b10df6 | tar -x -C DIR`")
PERTURBATION = 1e-3  # added to one bias of the project's policy: far above PROBE_ATOL in the samples


# ---- the weight mapping -----------------------------------------------------------------------------------------
def small_project_state() -> dict:
    """A residual project DiffusionMLP (obs 3, Ta 2, Da 2, widths 8 x 3: one residual block)."""
    torch.manual_seed(0)
    return DiffusionMLP(2, 2, 3, time_dim=4, mlp_dims=[8, 8, 8], activation="ReLU", residual_style=True).state_dict()


ORIGINAL_SHAPES = {  # the original DiffusionMLP(action_dim 2, horizon 2, cond 3, time_dim 4, [8, 8, 8], residual)
    "network.time_embedding.1.weight": (8, 4), "network.time_embedding.1.bias": (8,),
    "network.time_embedding.3.weight": (4, 8), "network.time_embedding.3.bias": (4,),
    "network.mlp_mean.layers.0.weight": (8, 11), "network.mlp_mean.layers.0.bias": (8,),
    "network.mlp_mean.layers.1.l1.weight": (8, 8), "network.mlp_mean.layers.1.l1.bias": (8,),
    "network.mlp_mean.layers.1.l2.weight": (8, 8), "network.mlp_mean.layers.1.l2.bias": (8,),
    "network.mlp_mean.layers.2.weight": (4, 8), "network.mlp_mean.layers.2.bias": (4,),
}


def small_project_gaussian_state(learn_fixed_std: bool = False) -> dict:
    """A residual project GaussianMLP (obs 3, Ta 2, Da 2, widths 8 x 3: one residual block), as pre-training leaves
    it: a fixed std, so no logvar (unless `learn_fixed_std`)."""
    torch.manual_seed(0)
    return GaussianMLP(2, 2, 3, mlp_dims=[8, 8, 8], activation="ReLU", residual_style=True, fixed_std=0.1,
                       learn_fixed_std=learn_fixed_std).state_dict()


ORIGINAL_GAUSSIAN_SHAPES = {  # the original Gaussian_MLP(action_dim 2, horizon 2, cond 3, [8, 8, 8], residual,
    # fixed_std, learn_fixed_std) inside GaussianModel.network
    "network.mlp_mean.layers.0.weight": (8, 3), "network.mlp_mean.layers.0.bias": (8,),
    "network.mlp_mean.layers.1.l1.weight": (8, 8), "network.mlp_mean.layers.1.l1.bias": (8,),
    "network.mlp_mean.layers.1.l2.weight": (8, 8), "network.mlp_mean.layers.1.l2.bias": (8,),
    "network.mlp_mean.layers.2.weight": (4, 8), "network.mlp_mean.layers.2.bias": (4,),
    "network.logvar": (2,), "network.logvar_min": (), "network.logvar_max": (),
}
MAPPINGS = {  # name -> (mapping, a small project state, the original's names and shapes)
    "diffusion": (original_actor_state, small_project_state, ORIGINAL_SHAPES),
    "gaussian": (original_gaussian_state, small_project_gaussian_state, ORIGINAL_GAUSSIAN_SHAPES),
}


def test_original_actor_state_renames_every_parameter():
    ours = small_project_state()
    expected = {name: torch.Size(shape) for name, shape in ORIGINAL_SHAPES.items()}
    mapped = original_actor_state(ours, expected)
    assert mapped.keys() == expected.keys()
    assert torch.equal(mapped["network.mlp_mean.layers.1.l2.weight"], ours["mlp.blocks.0.fc2.weight"])
    assert torch.equal(mapped["network.mlp_mean.layers.2.bias"], ours["mlp.output_layer.bias"])
    assert torch.equal(mapped["network.time_embedding.3.weight"], ours["time_embedding.3.weight"])


def test_original_gaussian_state_renames_every_parameter_of_the_mean_and_leaves_the_std_to_the_config():
    ours = small_project_gaussian_state()
    expected = {name: torch.Size(shape) for name, shape in ORIGINAL_GAUSSIAN_SHAPES.items()}
    mapped = original_gaussian_state(ours, expected)
    assert mapped.keys() == expected.keys() - {"network.logvar", "network.logvar_min", "network.logvar_max"}
    assert torch.equal(mapped["network.mlp_mean.layers.0.weight"], ours["mean_net.input_layer.weight"])
    assert torch.equal(mapped["network.mlp_mean.layers.1.l1.bias"], ours["mean_net.blocks.0.fc1.bias"])
    assert torch.equal(mapped["network.mlp_mean.layers.1.l2.weight"], ours["mean_net.blocks.0.fc2.weight"])
    assert torch.equal(mapped["network.mlp_mean.layers.2.bias"], ours["mean_net.output_layer.bias"])


@pytest.mark.parametrize("mapping", sorted(MAPPINGS))
@pytest.mark.parametrize("change, message", [
    (lambda shapes: shapes.update({"network.mlp_mean.layers.3.weight": torch.Size((4, 8))}), "missing"),
    (lambda shapes: shapes.pop("network.mlp_mean.layers.1.l1.bias"), "unexpected"),
    (lambda shapes: shapes.update({"network.mlp_mean.layers.0.weight": torch.Size((8, 12))}), "vs (8, 12)"),
])
def test_mapping_refuses_names_or_shapes_that_differ(mapping, change, message):
    map_state, project_state, original_shapes = MAPPINGS[mapping]
    expected = {name: torch.Size(shape) for name, shape in original_shapes.items()}
    change(expected)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        map_state(project_state(), expected)


def test_original_actor_state_refuses_a_parameter_without_counterpart():
    ours = {**small_project_state(), "cond_mlp.layers.0.weight": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="cond_mlp.layers.0.weight"):
        original_actor_state(ours, {name: torch.Size(shape) for name, shape in ORIGINAL_SHAPES.items()})


def test_original_gaussian_state_maps_a_learned_logvar_onto_the_originals():
    """A learned std is one log-variance per action dim (Da,) in both codes: the project's logvar is the original's."""
    state = small_project_gaussian_state(learn_fixed_std=True)
    renamed = original_gaussian_state(state, {name: torch.Size(shape) for name, shape in ORIGINAL_GAUSSIAN_SHAPES.items()})
    assert torch.equal(renamed["network.logvar"], state["logvar"])
    assert "network.logvar_min" not in renamed


# ---- the original's Gaussian PPO config, written with this project's settings --------------------------------------
GAUSSIAN_SETTINGS = {  # original_ft_ppo_gaussian_mlp.yaml's key -> the composed ft_ppo_gaussian_mlp's
    **{key: key for key in ("cond_steps", "horizon_steps", "act_steps", "train.n_critic_warmup_itr", "train.gamma",
                            "train.actor_lr", "train.actor_weight_decay", "train.critic_lr", "train.critic_weight_decay",
                            "train.max_grad_norm", "train.save_model_freq", "train.reward_scale_running",
                            "train.reward_scale_const", "train.gae_lambda", "train.batch_size", "train.update_epochs",
                            "train.vf_coef", "train.target_kl", "train.ent_coef", "train.use_bc_loss")},
    **{f"train.{role}_lr_scheduler.{key}": f"train.{role}_lr_scheduler.{key}"
       for role in ("actor", "critic") for key in ("first_cycle_steps", "warmup_steps", "min_lr")},
    "env.reset_at_iteration": "train.reset_at_iteration",
    "model.clip_ploss_coef": "train.clip_ploss_coef", "model.clip_vloss_coef": "train.clip_vloss_coef",
    "model.norm_adv": "train.norm_adv", "model.randn_clip_value": "model.randn_clip_value",
    **{f"model.actor.{key}": f"model.network.{key}"
       for key in ("mlp_dims", "residual_style", "tanh_output", "fixed_std", "learn_fixed_std", "std_min", "std_max")},
    "model.actor.activation_type": "model.network.activation",
    "model.critic.mlp_dims": "critic.mlp_dims", "model.critic.activation_type": "critic.activation",
    "model.critic.residual_style": "critic.residual_style",
}
ABSENT = "<absent>"  # a key one config lacks
ORIGINAL_FIXED = {  # project settings the original has no key for, at the value its code fixes (or never applies)
    "model.logprob_min": -5.0, "model.logprob_max": 2.0,  # model/rl/gaussian_ppo.py: clamp(min=-5, max=2)
    "model.final_action_clip_value": None, "train.reward_offset": 0,
    "train.clip_advantage_lower_quantile": 0.0, "train.clip_advantage_upper_quantile": 1.0,
    "train.grad_chunk_size": None,
}


def test_original_gaussian_config_has_the_projects_settings():
    ours = project_config("gaussian", "hopper")
    theirs = OmegaConf.load(GAUSSIAN_CONFIG)
    pairs = {original: (OmegaConf.select(theirs, original, default=ABSENT), OmegaConf.select(ours, project, default=ABSENT))
             for original, project in GAUSSIAN_SETTINGS.items()}
    assert {key: pair for key, pair in pairs.items() if pair[0] != pair[1] or ABSENT in pair} == {}
    assert {key: OmegaConf.select(ours, key) for key in ORIGINAL_FIXED} == ORIGINAL_FIXED
    assert OmegaConf.select(ours, "model._target_") == "model.common.gaussian.GaussianModel"


# ---- the original's env contract --------------------------------------------------------------------------------
class Counter(gym.Env):
    """obs {"state": [steps taken, 10]}, reward 1 per step, terminates on an action above 0.5; remembers the action."""

    observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, shape=(2,))})
    action_space = gym.spaces.Box(-10, 10, shape=(1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return {"state": np.array([0.0, 10.0])}, {}

    def step(self, action):
        self.steps += 1
        self.last_action = action
        return {"state": np.array([float(self.steps), 10.0])}, 1.0, bool(action[0] > 0.5), False, {}


def counter_env(tmp_path, time_limit: int) -> tuple[MultiStep, Counter]:
    """Counter in a time limit, normalized with obs range [0, 8] x [10, 10] and action range [-2, 2], 4 actions
    per chunk, reset within step."""
    path = tmp_path / "normalization.npz"
    np.savez(path, obs_min=np.array([0.0, 10.0]), obs_max=np.array([8.0, 10.0]), action_min=np.array([-2.0]),
             action_max=np.array([2.0]))
    counter = Counter()
    env = LowdimNormalization(OldGymApi(gym.wrappers.TimeLimit(counter, time_limit)), str(path))
    return MultiStep(env, n_obs_steps=1, n_action_steps=4, max_episode_steps=time_limit, reset_within_step=True), counter


def normalized(steps: float) -> np.ndarray:
    """The original's normalization of Counter's obs [steps, 10] with the ranges of `counter_env`."""
    return np.array([[2 * (steps / (8.0 + 1e-6) - 0.5), 2 * (0.0 / 1e-6 - 0.5)]])


def test_chunk_rewards_summed_and_time_limit_end_both_terminated_and_truncated(tmp_path):
    env, counter = counter_env(tmp_path, time_limit=6)
    np.testing.assert_allclose(env.reset()["state"], normalized(0))
    obs, reward, terminated, truncated, info = env.step(np.full((4, 1), -1.0))
    assert (reward, terminated, truncated, info) == (4.0, False, False, {})
    np.testing.assert_allclose(obs["state"], normalized(4))
    assert counter.last_action[0] == pytest.approx(-2.0)  # -1 un-normalized to the action range's minimum
    obs, reward, terminated, truncated, info = env.step(np.full((4, 1), -1.0))
    assert (reward, terminated, truncated) == (2.0, True, True)  # old gym's TimeLimit: done and truncated
    np.testing.assert_allclose(info["final_obs"]["state"], normalized(6))
    np.testing.assert_allclose(obs["state"], normalized(0))  # reset within the step


def test_termination_stops_the_chunk_and_gives_no_final_obs(tmp_path):
    env, _ = counter_env(tmp_path, time_limit=100)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(np.array([[-1.0], [1.0], [-1.0], [-1.0]]))
    assert (reward, terminated, truncated, info) == (2.0, True, False, {})
    np.testing.assert_allclose(obs["state"], normalized(0))


def test_vector_env_keeps_every_ended_episode_and_whether_it_was_first_since_a_reset(tmp_path):
    venv = SequentialVectorEnv([counter_env(tmp_path, time_limit=100)[0] for _ in range(2)])
    venv.reset_arg([{}, {}])
    stop, go = np.full((4, 1), 1.0), np.full((4, 1), -1.0)  # stop: the first action ends the episode
    venv.step(np.stack([stop, go]))  # env 0: return 1, its first episode
    venv.step(np.stack([stop, go]))  # env 0: return 1 again, not its first; env 1 runs on (return 8)
    venv.reset_one_arg(1)  # env 1's running episode is dropped
    venv.step(np.stack([go, stop]))  # env 1: return 1, its first since the reset
    assert venv.pop_episodes() == [(1.0, True), (1.0, False), (1.0, True)]
    assert venv.pop_episodes() == []


# ---- the comparison's table ----------------------------------------------------------------------------------------
def evaluated_run(returns: list[float], train_time: float) -> list[dict]:
    """Rows of a run evaluated before training and after each of len(returns) - 1 training iterations."""
    rows = [{"step": 0, "eval/episode_return": returns[0], "eval/eval_time": 1.0}]
    for step, value in enumerate(returns[1:], start=1):
        rows += [{"step": step, "train/iteration_time": train_time},
                 {"step": step, "eval/episode_return": value, "eval/eval_time": 3.0}]
    return rows


def test_summary_line_gives_evaluations_before_final_and_best_over_seeds():
    line = summary_line("project", [evaluated_run([100.0, 300.0, 200.0], 10.0), evaluated_run([120.0, 180.0, 400.0], 14.0)])
    assert line == ("| project | 2 | 110.0 ± 10.0 [100.0, 120.0] | 300.0 ± 100.0 [200.0, 400.0] | "
                    "350.0 ± 50.0 [300.0, 400.0] | 12.0 | 2.3 |")


def write_project_run(path, n_train_itr: int, evaluated_last: bool) -> None:
    os.makedirs(path)
    rows = [{"step": 0, "eval/episode_return": 100.0}]
    rows += [{"step": step, "train/rollout_time": 1.0, "train/update_time": 2.0, "train/q_loss": 0.5,
              "train/v_loss": 0.25} for step in range(1, n_train_itr + 1)]
    if evaluated_last:
        rows.append({"step": n_train_itr, "eval/episode_return": 300.0})
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def test_a_bisecting_step_reads_this_projects_finished_runs_and_leaves_the_other_seeds_out(tmp_path, capsys):
    args = argparse.Namespace(algorithm="idql", task="hopper", n_train_itr=2)
    for seed in (0, 1):
        write_project_run(tmp_path / "project" / "idql_hopper" / f"seed{seed}", 2, evaluated_last=seed == 0)
    name, rows_by_seed = bisect_rows(f"with_quirk={tmp_path}", args, [0, 1, 2])  # seed 1 unfinished, seed 2 absent
    assert name == "with_quirk" and list(rows_by_seed) == [0]
    assert [row.get("train/iteration_time") for row in rows_by_seed[0]] == [None, 3.0, 3.0, None]
    assert rows_by_seed[0][1]["train/critic_loss"] == 0.75  # the sum the original logs
    said = capsys.readouterr().out
    assert "seed1 is not a finished run of 2 training iterations: left out" in said and "seed2 is not" in said
    with pytest.raises(SystemExit, match=r"--also with_quirk: no finished run of 2 training iterations for seeds 1, 2"):
        bisect_rows(f"with_quirk={tmp_path}", args, [1, 2])
    for spec in (str(tmp_path), f"with quirk={tmp_path}", "with_quirk="):
        with pytest.raises(SystemExit, match="write NAME=RUNS"):
            bisect_rows(spec, args, [0])


# ---- with a checkout of the original ----------------------------------------------------------------------------
def run_original(out, *args: str) -> None:
    command = [sys.executable, os.path.join(REFERENCE_DIR, "run_original.py"), "--original", ORIGINAL,
               "--out", str(out), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def output_biases(policy) -> list[torch.Tensor]:
    """The bias of the layer that outputs the action: a Gaussian policy's mean, both copies of a denoiser."""
    if isinstance(policy, GaussianModel):
        return [policy.network.mean_net.output_layer.bias]
    return [network.mlp.output_layer.bias for network in (policy.network, policy.actor_ft)]


@needs_original
@pytest.mark.parametrize("algorithm", ["ppo", "rwr", "awr", "dql", "idql", "gaussian"])
def test_original_samples_like_the_project_from_the_mapped_checkpoint(tmp_path, algorithm):
    run_original(tmp_path, "--algorithm", algorithm, "--probe-only")
    probe = torch.load(tmp_path / "probe_samples.pt", weights_only=True)
    policy = project_policy(algorithm, "hopper")
    assert probe_difference(policy, probe) < PROBE_ATOL
    with torch.no_grad():  # control: one changed output bias is seen
        for bias in output_biases(policy):
            bias += PERTURBATION
    assert probe_difference(policy, probe) > PROBE_ATOL


@needs_original
def test_original_gaussian_explores_with_the_projects_noise_and_std(tmp_path):
    """The exploring chunks agree too (same noise, same std); a change of the std alone is seen in them only."""
    run_original(tmp_path, "--algorithm", "gaussian", "--probe-only")
    probe = torch.load(tmp_path / "probe_samples.pt", weights_only=True)
    policy = project_policy("gaussian", "hopper")

    def differences() -> dict[str, float]:
        found = {}
        for name, deterministic in (("deterministic", True), ("exploring", False)):
            torch.manual_seed(PROBE_SEED)
            actions = policy.sample({"state": probe["state"]}, deterministic=deterministic).actions
            found[name] = (actions - probe[name]).abs().max().item()
        return found

    assert max(differences().values()) < PROBE_ATOL
    with torch.no_grad():
        policy.network.logvar += PERTURBATION
    changed = differences()
    assert changed["deterministic"] < PROBE_ATOL < changed["exploring"]


@needs_original
@pytest.mark.parametrize("algorithm", ["ppo", "gaussian"])
def test_runner_runs_one_short_training_iteration_between_two_evaluations(tmp_path, algorithm):
    n_envs, n_steps, act_steps = 2, 5, 4
    run_original(tmp_path, "--algorithm", algorithm, "--task", "hopper", "--n-envs", str(n_envs), "--n-steps",
                 str(n_steps), "--n-train-itr", "1", "--val-freq", "1")
    with open(tmp_path / "metrics.csv") as f:
        logged = list(csv.DictReader(f))
    assert [row["itr"] for row in logged] == ["0", "1", "2"]
    assert [bool(row["avg episode reward - eval"]) for row in logged] == [True, False, True]
    assert float(logged[1]["total env step"]) == n_envs * n_steps * act_steps
    assert all(np.isfinite(float(logged[1][key])) for key in ("loss", "pg loss", "value loss", "wall_time"))
    rows = original_rows(tmp_path)
    assert [(row["step"], "eval/eval_time" in row) for row in rows] == [(0, True), (1, False), (1, True)]
    assert [row.get("eval/n_episodes", row.get("train/n_episodes")) for row in rows] == [0, 0, 0]  # 5 chunks: none
    assert rows[1]["train/loss"] == pytest.approx(float(logged[1]["loss"]))
