"""Bad settings stop `script/run.py` before anything is built: one line naming the key, the value and what is
allowed, a non-zero exit, no run directory. Settings that used to be ignored are honoured (a gym task's
max_episode_steps) or refused (diffusion keys under a policy without denoising steps)."""

import dataclasses
import glob
import inspect
import os
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
import torch
from conftest import compose_config
from hydra.utils import get_object
from omegaconf import OmegaConf

from agent.finetune.ppo import PPOTrainSettings
from dppo.config import ConfigError, load_task_config, task_names, validate_config
from dppo.schema import constructor_parameters, target_nodes
from env.families import make_family_env
from model.rl.ppo import PPOSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
PRESETS = sorted(os.path.basename(path)[:-5] for path in glob.glob(os.path.join(REPO, "cfg", "*.yaml"))
                 if os.path.basename(path) not in ("common.yaml", "finetune.yaml", "pretrain.yaml"))

BAD_SETTINGS = [  # (overrides, the one line's start)
    (["train.batch_size=0"], "ConfigError: train.batch_size=0 is out of range: samples per gradient step"),
    (["env.n_envs=abc"], "ConfigError: env.n_envs='abc' has the wrong type: parallel envs must be an int >= 1."),
    (["env.n_envs=0"], "ConfigError: env.n_envs=0 is out of range: parallel envs must be an int >= 1."),
    (["train.n_steps=-3"], "ConfigError: train.n_steps=-3 is out of range: chunk-steps each env collects"),
    (["train.gamma=1.5"], "ConfigError: train.gamma=1.5 is out of range: discount per chunk-step must be a float in"),
    (["train.gamma=-1"], "ConfigError: train.gamma=-1.0 is out of range: discount per chunk-step must be a float in"),
    (["train.update_epochs=0"], "ConfigError: train.update_epochs=0 is out of range: passes over the rollout"),
    (["denoising_steps=0"], "ConfigError: denoising_steps=0 is out of range: the diffusion chain's steps must be an "
                            "int >= 1."),
    (["obs_dim=0"], "ConfigError: obs_dim=0 is out of range: state dimensions of the task must be an int >= 1."),
    (["max_episode_steps=-1"], "ConfigError: max_episode_steps=-1 is out of range: the task's time limit in env "
                               "steps must be an int >= 1."),
    (["seed=abc"], "ConfigError: seed='abc' has the wrong type: the run's seed (torch, numpy, the envs) must be an "
                   "int >= 0."),
    (["model.network.mlp_dims=abc"], "ConfigError: model.network.mlp_dims='abc' has the wrong type: DiffusionMLP "
                                     "takes a list of ints there."),
    (["+critic.mlp_dim=[64]"], "ConfigError: critic.mlp_dim is not a setting of CriticObs "
                               "(model.common.critic.CriticObs): its settings are cond_dim, mlp_dims,"),
    (["model.randn_clip_value=abc"], "ConfigError: model.randn_clip_value='abc' has the wrong type: "
                                     "FinetuneDiffusion takes a float there."),
    (["+train.foo=1"], "ConfigError: train.foo is not a setting here (PPOTrainSettings: "),
    (["policy=flow", "ft_denoising_steps=5"], "ConfigError: ft_denoising_steps=5 means nothing for policy=flow"),
    (["train.actor_lr_scheduler.warmup_steps=-1"],
     "ConfigError: train.actor_lr_scheduler.warmup_steps=-1 is out of range: iterations of linear warm-up"),
    (["env.family=gymnasium"], "ConfigError: env.family=gymnasium is out of range: the task family must be one of"),
    (["+train.target_ema_rate=0.1"], "ConfigError: train.target_ema_rate is now train.tau (one name for one setting)"),
    (["+model.reward_horizon=4"], "ConfigError: model.reward_horizon is now model.act_steps (one name for one setting)"),
    (["train.n_step=3"], "ConfigError: train.n_step is not a setting of this config: did you mean train.n_steps? "),
    (["policy=foo"], "ConfigError: In 'ft_ppo_diffusion_mlp': Could not find 'policy/foo'; Available options in "
                     "'policy': diffusion, flow, gaussian"),
    # the table's rows that had one clear line already, kept so through script/run.py
    (["precision=fp16"], "ConfigError: precision=fp16 is out of range: the update's precision"),
    (["ft_denoising_steps=30"], "ConfigError: ft_denoising_steps=30 must be in 1..20 (the number of denoising steps)"),
    (["task=nonexistent"], "Unknown task 'nonexistent': use one of "),
    (["base_policy_path=/nonexistent/policy.pt"], "FileNotFoundError: Pre-trained policy /nonexistent/policy.pt not "
                                                  "found: make it with `python script/run.py"),
]


# A run that a check misses ends in seconds (the case's own overrides come later and win): under a mutation that
# removes a check, the test fails without a whole Hopper iteration first.
SMALL_RUN = ["env.n_envs=1", "train.n_steps=4", "train.batch_size=4", "train.n_train_itr=1", "max_episode_steps=20"]


def run_script(overrides: list[str], logdir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "script", "run.py"), "--config-name=ft_ppo_diffusion_mlp",
                           "wandb=null", f"logdir={logdir}", *SMALL_RUN, *overrides], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overrides,line", BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS])
def test_a_bad_setting_stops_the_run_with_one_line_before_anything_is_built(tmp_path, overrides, line):
    result = run_script(overrides, tmp_path / "run")
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0
    assert len(output) == 1 and output[0].startswith(line), output
    assert not (tmp_path / "run").exists(), "no run directory left behind"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_gets_one_line(tmp_path):
    result = run_script(["device=cuda"], tmp_path / "run")
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0 and len(output) == 1
    assert output[0].startswith("ConfigError: device=cuda but torch sees no GPU here: use device=cpu"), output


def test_a_gym_tasks_max_episode_steps_is_its_time_limit():
    cfg = compose_config("ft_ppo_diffusion_mlp", ["max_episode_steps=5", "device=cpu"])
    env = make_family_env(cfg.env.family, cfg.env.id, seed=0, **cfg.env.kwargs)
    env.reset(seed=0)
    truncations = [env.step(env.action_space.sample() * 0)[3] for _ in range(5)]
    assert truncations == [False, False, False, False, True]


def test_a_preset_key_the_policy_ignores_is_dropped_from_the_composition():
    """ft_ppo_flow_mlp composes PPO's ft_denoising_steps; the flow policy has no denoising steps, so the run's
    config does not keep it."""
    cfg = compose_config("ft_ppo_flow_mlp", ["device=cpu"])
    assert "ft_denoising_steps" in cfg
    validate_config(cfg)
    assert "ft_denoising_steps" not in cfg and cfg.model.inference_steps == 4


def test_docs_settings_md_is_what_the_schemas_give():
    sys.path.insert(0, os.path.join(REPO, "script"))
    import settings_reference

    with open(os.path.join(REPO, "docs", "SETTINGS.md")) as f:
        assert f.read() == settings_reference.reference(), "run python script/settings_reference.py"


def test_docs_settings_md_is_the_same_on_machines_with_and_without_bf16(monkeypatch):
    """The default precision depends on the machine (bf16 where it multiplies bf16 natively): the reference shows
    the resolver, not this machine's answer, so CI on a host without avx512_bf16 finds the committed file."""
    sys.path.insert(0, os.path.join(REPO, "script"))
    import settings_reference

    import dppo.precision

    references = []
    for native in (True, False):
        monkeypatch.setattr(dppo.precision, "native_bf16", lambda device, native=native: native)
        references.append(settings_reference.reference())
    assert references[0] == references[1]
    assert "| `precision` | one of fp32, bf16 | `${default_precision:${device}}` |" in references[0]


def test_a_task_whose_env_does_not_get_its_max_episode_steps_is_refused():
    cfg = compose_config("ft_ppo_diffusion_mlp", ["~env.kwargs.max_episode_steps", "device=cpu"])
    with pytest.raises(ConfigError, match=r"max_episode_steps=1000 does not reach the env: the task file's env.kwargs"):
        validate_config(cfg)


def test_every_ppo_loss_setting_comes_from_the_ppo_schema():
    """PPOAgent builds the loss's settings from train.* alone: each PPOSettings field is a PPO train setting, so no
    code default of the loss reaches a run (gamma_denoising: 1.0 in the loss, 0.99 in cfg/algorithm/ppo.yaml)."""
    schema_fields = {field.name for field in dataclasses.fields(PPOTrainSettings)}
    assert {field.name for field in dataclasses.fields(PPOSettings)} <= schema_fields
    assert compose_config("ft_ppo_diffusion_mlp", ["device=cpu"]).train.gamma_denoising == 0.99 != PPOSettings().gamma_denoising


def test_no_code_default_is_one_every_preset_replaces():
    """A constructor default that no preset uses misleads whoever reads the code (gamma_denoising was 1.0 in the loss
    and 0.99 in every config): for each class a preset builds, on every task, no parameter has a code default that
    every preset building the class replaces by one same other value. One task per family (and per observation
    kind) stands for its family: the tasks of a family compose the same classes, and give each constructor the same
    literal values (checked 2026-12-06: every task gave the same verdict for every key, in 76 s against 11 s)."""
    family_tasks = {}
    for task in task_names():
        family_tasks.setdefault((load_task_config(task).env.family, task.endswith("_img")), task)
    builds, values, defaults = Counter(), defaultdict(list), {}
    for config_name in PRESETS:
        for task in family_tasks.values():
            if task.endswith("_img") != config_name.endswith("_img"):
                continue
            try:
                cfg = compose_config(config_name, ["device=cpu", f"task={task}"])
            except Exception:  # a preset that does not compose with this task (an image config's interpolations)
                continue
            for _, node in target_nodes(cfg):
                builds[node._target_] += 1
                parameters = constructor_parameters(get_object(node._target_))[0]
                for key, value in OmegaConf.to_container(node, resolve=False).items():
                    default = parameters[key].default if key in parameters else inspect.Parameter.empty
                    if default is not inspect.Parameter.empty and not isinstance(value, dict) and "${" not in str(value):
                        values[node._target_, key].append(value)
                        defaults[node._target_, key] = list(default) if isinstance(default, tuple) else default
    assert sum(builds.values()) > 100
    misleading = [(target, key, defaults[target, key], preset_values[0])
                  for (target, key), preset_values in values.items()
                  if len(preset_values) == builds[target] and len({repr(v) for v in preset_values}) == 1
                  and preset_values[0] != defaults[target, key]]
    assert not misleading
