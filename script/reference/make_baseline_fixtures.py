"""Expected values for the fine-tuning baselines (DRWR, DAWR, DQL, IDQL, Gaussian PPO), computed by the original code.

    git --git-dir=/work/.mirror/irom-lab+dppo/repo archive HEAD | tar -x -C /tmp/dppo_ref
    python script/reference/make_baseline_fixtures.py --reference /tmp/dppo_ref --out tests/data/reference_baselines.pt

Imports the reference's modules from the checkout (irom-lab/dppo), builds small models with deterministic weights,
runs the reference's own functions (and, for DRWR and DAWR, one iteration of the agent's `run()` on a scripted vector
env) and saves configs, state dicts (reference parameter names), inputs, every random value drawn inside the calls,
and outputs in one file that `torch.load(weights_only=True)` reads. script/reference/README.md describes each entry.
Values come out of the reference's code: this script feeds it and listens (forward hooks, wrapped methods, a tracer
that copies the agents' local variables, recorded random draws). The few entries derived here from reference tensors
(listed in the README) apply the reference's own formula to them, for convenience.
"""

import argparse
import contextlib
import copy
import math
import os
import subprocess
import sys
import tempfile
import types
import zlib

import numpy as np
import torch
from torch import nn

DEFAULT_GIT_DIR = "/work/.mirror/irom-lab+dppo/repo"
REFERENCE_FILES = (
    "model/common/mlp.py",
    "model/common/critic.py",
    "model/common/gaussian.py",
    "model/common/mlp_gaussian.py",
    "model/diffusion/diffusion.py",
    "model/diffusion/sampling.py",
    "model/diffusion/modules.py",
    "model/diffusion/mlp_diffusion.py",
    "model/diffusion/diffusion_rwr.py",
    "model/diffusion/diffusion_awr.py",
    "model/diffusion/diffusion_dql.py",
    "model/diffusion/diffusion_idql.py",
    "model/rl/gaussian_vpg.py",
    "model/rl/gaussian_ppo.py",
    "agent/finetune/train_agent.py",
    "agent/finetune/train_rwr_diffusion_agent.py",
    "agent/finetune/train_awr_diffusion_agent.py",
)

# Small shapes (Gym-like: one observation step, the executed part of the chunk = the whole chunk where the
# reference needs it, see README "act_steps").
OBS_DIM = 3
ACTION_DIM = 2
HORIZON_STEPS = 4
DENOISING_STEPS = 5
HIDDEN_DIMS = [16, 16, 16]
TIME_DIM = 16
BATCH = 6
MIN_ABS_ADVANTAGE = 1e-3  # IDQL's candidate advantages stay this far from 0, where rounding could flip a weight
N_CANDIDATES = 20  # IDQL: train.eval_sample_num of every reference IDQL config, used when exploring and evaluating
DIFFUSION_MODEL = dict(horizon_steps=HORIZON_STEPS, obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                       denoising_steps=DENOISING_STEPS, predict_epsilon=True, denoised_clip_value=1.0,
                       randn_clip_value=3, final_action_clip_value=None, min_sampling_denoising_std=0.1,
                       device="cpu")


# ---- reference import ----------------------------------------------------------------------------------------
def import_reference(reference: str) -> types.SimpleNamespace:
    """The reference's classes and functions, imported from the checkout (never from this project)."""
    project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != project_root]
    sys.path.insert(0, reference)
    # agent/finetune/train_agent.py imports the gym env factory at module level; no env is built here.
    env_stub, gym_utils_stub = types.ModuleType("env"), types.ModuleType("env.gym_utils")
    gym_utils_stub.make_async = None
    env_stub.gym_utils = gym_utils_stub
    sys.modules.update({"env": env_stub, "env.gym_utils": gym_utils_stub})
    if "wandb" not in sys.modules:
        try:
            import wandb  # noqa: F401
        except ImportError:
            sys.modules["wandb"] = types.ModuleType("wandb")

    from agent.finetune import train_awr_diffusion_agent, train_rwr_diffusion_agent
    from model.common import critic, mlp_gaussian
    from model.diffusion import diffusion_awr, diffusion_dql, diffusion_idql, diffusion_rwr, mlp_diffusion
    from model.rl import gaussian_ppo

    for module in (train_awr_diffusion_agent, train_rwr_diffusion_agent, critic, mlp_gaussian, diffusion_awr,
                   diffusion_dql, diffusion_idql, diffusion_rwr, mlp_diffusion, gaussian_ppo):
        if not os.path.abspath(module.__file__).startswith(os.path.abspath(reference)):
            raise SystemExit(f"{module.__name__} was imported from {module.__file__}, not from {reference}.")
    return types.SimpleNamespace(
        DiffusionMLP=mlp_diffusion.DiffusionMLP, CriticObs=critic.CriticObs, CriticObsAct=critic.CriticObsAct,
        GaussianMLP=mlp_gaussian.Gaussian_MLP, RWRDiffusion=diffusion_rwr.RWRDiffusion,
        AWRDiffusion=diffusion_awr.AWRDiffusion, DQLDiffusion=diffusion_dql.DQLDiffusion,
        IDQLDiffusion=diffusion_idql.IDQLDiffusion, PPOGaussian=gaussian_ppo.PPO_Gaussian,
        TrainRWRAgent=train_rwr_diffusion_agent.TrainRWRDiffusionAgent,
        TrainAWRAgent=train_awr_diffusion_agent.TrainAWRDiffusionAgent, td_values=train_awr_diffusion_agent.td_values,
    )


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def reference_commit(reference: str, git_dir: str) -> str:
    """HEAD of git_dir, after checking that every reference file used here is that commit's version."""
    if not os.path.isdir(git_dir):
        raise SystemExit(f"No git directory at {git_dir}: pass the reference's --git-dir.")
    commit = git(git_dir, "rev-parse", "HEAD")
    for path in REFERENCE_FILES:
        local = subprocess.run(["git", "hash-object", os.path.join(reference, path)], capture_output=True,
                               text=True, check=True).stdout.strip()
        if local != git(git_dir, "rev-parse", f"HEAD:{path}"):
            raise SystemExit(f"{reference}/{path} differs from {commit}: extract a fresh checkout.")
    return commit


# ---- deterministic weights and inputs ---------------------------------------------------------------------
def fill_parameters(module: nn.Module, seed: int, skip: tuple[str, ...] = ()) -> None:
    """Weights that depend only on each parameter's name and shape: normal(0, 1/sqrt(fan_in)) for matrices,
    normal(0, 0.1) for vectors; names containing one of `skip` keep their value."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if any(part in name for part in skip):
                continue
            generator = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(noise / math.sqrt(param.shape[1]) if param.dim() >= 2 else 0.1 * noise)


def randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def cond_of(state: torch.Tensor) -> dict:
    return {"state": state}


# ---- listening to the reference -------------------------------------------------------------------------------
def snapshot(value):
    """A copy that later in-place changes of the original do not reach."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return copy.copy(value)


def to_fixture(value):
    """Plain types only (tensors, dicts with str keys, lists, numbers, str, None): what weights_only loading reads."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().contiguous()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_fixture(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_fixture(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, str):  # e.g. torch.__version__, a str subclass
        return str(value)
    raise TypeError(f"Cannot store {type(value).__name__} in the fixture.")


class DrawRecorder:
    """Records, per function and in call order, every value drawn by torch.randn / randn_like / randint /
    multinomial and numpy.random.uniform / choice while active (raw draws, before any in-place clamp)."""

    TORCH = ("randn", "randn_like", "randint", "multinomial")
    NUMPY = ("uniform", "choice")

    def __enter__(self):
        self.draws = {name: [] for name in self.TORCH + self.NUMPY}
        self._originals = [(torch, name, getattr(torch, name)) for name in self.TORCH]
        self._originals += [(np.random, name, getattr(np.random, name)) for name in self.NUMPY]
        for owner, name, original in self._originals:
            setattr(owner, name, self._recording(name, original))
        return self

    def _recording(self, name, original):
        def draw(*args, **kwargs):
            value = original(*args, **kwargs)
            self.draws[name].append(snapshot(value))
            return value
        return draw

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)

    def used(self) -> dict:
        return {name: values for name, values in self.draws.items() if values}


class DrawReplay:
    """Makes the patched random functions return the given draws in order (a self-check that they suffice)."""

    def __init__(self, draws: dict):
        self.queues = {name: list(values) for name, values in draws.items()}

    def __enter__(self):
        self._originals = [(torch, name, getattr(torch, name)) for name in DrawRecorder.TORCH]
        self._originals += [(np.random, name, getattr(np.random, name)) for name in DrawRecorder.NUMPY]
        for owner, name, _ in self._originals:
            setattr(owner, name, self._replaying(name))
        return self

    def _replaying(self, name):
        def draw(*args, **kwargs):
            queue = self.queues.get(name)
            if not queue:
                raise RuntimeError(f"No recorded draw left for {name}.")
            return snapshot(queue.pop(0))
        return draw

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        if exc[0] is None and any(self.queues.values()):
            raise RuntimeError(f"Recorded draws left unused: { {k: len(v) for k, v in self.queues.items() if v} }")


class CallRecorder:
    """Wraps obj.<name> (instance attribute, or class attribute when obj is a class): records each call's
    arguments, the random values drawn inside it, and its output; `live` keeps the unsnapshotted objects."""

    def __init__(self, obj, name: str):
        self.obj, self.name, self.calls, self.live = obj, name, [], []

    def __enter__(self):
        original = getattr(self.obj, self.name)

        def call(*args, **kwargs):
            with DrawRecorder() as recorder:
                output = original(*args, **kwargs)
            recorded_args = args[1:] if isinstance(self.obj, type) else args  # drop self for a class attribute
            self.calls.append({"args": snapshot(list(recorded_args)), "kwargs": snapshot(kwargs),
                               "draws": recorder.used(), "output": snapshot(output)})
            self.live.append((args, output))
            return output

        self._original = original
        setattr(self.obj, self.name, call)
        return self

    def __exit__(self, *exc):
        if isinstance(self.obj, type):
            setattr(self.obj, self.name, self._original)
        else:
            delattr(self.obj, self.name)


@contextlib.contextmanager
def recording_outputs(**modules: nn.Module):
    """{name: [output of each forward call]} for the given modules, while active."""
    outputs = {name: [] for name in modules}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(snapshot(out)))
               for name, module in modules.items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class LocalsTracer:
    """Copies chosen local variables of one function while it runs: `bindings[name]` holds a copy of each new
    object bound to the name (taken at the next line, so before in-place changes on that line), `final[name]`
    the value when the function returns."""

    def __init__(self, function, names: tuple[str, ...]):
        self.code, self.names = function.__code__, names
        self.bindings = {name: [] for name in names}
        self.final = {}
        self._bound = {}

    def __enter__(self):
        self._previous = sys.gettrace()
        sys.settrace(self._on_call)
        return self

    def __exit__(self, *exc):
        sys.settrace(self._previous)

    def _on_call(self, frame, event, arg):
        return self._on_line if frame.f_code is self.code else None

    def _on_line(self, frame, event, arg):
        local = frame.f_locals
        for name in self.names:
            if name in local and self._bound.get(name, self) is not local[name]:
                self._bound[name] = local[name]
                self.bindings[name].append(snapshot(local[name]))
        if event == "return":
            self.final = {name: snapshot(local[name]) for name in self.names if name in local}
        return self._on_line


# ---- a scripted vector env and a bare agent ---------------------------------------------------------------------
class ScriptedVectorEnv:
    """The reference's vector-env surface (reset_arg, step) replaying fixed observations and rewards.

    obs: (T + 1, N, To, Do), obs[t] seen before step t (after an auto-reset when step t - 1 ended an episode);
    rewards, terminated, truncated: (T, N). Actions are recorded, not used.
    """

    def __init__(self, obs: np.ndarray, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray):
        self.obs, self.rewards, self.terminated, self.truncated = obs, rewards, terminated, truncated
        self.actions = []

    def reset_arg(self, options_list):
        self.t = 0
        return {"state": self.obs[0].copy()}

    def step(self, actions):
        t = self.t
        self.t += 1
        self.actions.append(np.array(actions))
        info = [{} for _ in range(self.obs.shape[1])]
        return ({"state": self.obs[t + 1].copy()}, self.rewards[t].copy(), self.terminated[t].copy(),
                self.truncated[t].copy(), info)


class NoOp:
    """Optimizer / lr scheduler stand-in: the weights stay those stored in the fixture for every recorded value."""

    def zero_grad(self):
        pass

    def step(self):
        pass


def bare_agent(agent_class, result_dir: str, **attrs):
    """An agent object without its __init__ (which builds envs and loggers): only what run() reads."""
    agent = object.__new__(agent_class)
    defaults = dict(itr=0, n_train_itr=1, val_freq=10, force_train=True, render_freq=1, render_video=False,
                    n_render=0, reset_at_iteration=True, n_cond_step=1, obs_dim=OBS_DIM, action_dim=ACTION_DIM,
                    horizon_steps=HORIZON_STEPS, device="cpu", best_reward_threshold_for_success=1.0,
                    max_grad_norm=None, save_model_freq=1, log_freq=1, use_wandb=False,
                    result_path=os.path.join(result_dir, "result.pkl"))
    for key, value in {**defaults, **attrs}.items():
        setattr(agent, key, value)
    agent.save_model = lambda: None
    return agent


# ---- network entries -------------------------------------------------------------------------------------------
def diffusion_actor_config(cond_steps: int = 1) -> dict:
    return dict(action_dim=ACTION_DIM, horizon_steps=HORIZON_STEPS, cond_dim=OBS_DIM * cond_steps, time_dim=TIME_DIM,
                mlp_dims=list(HIDDEN_DIMS), activation_type="ReLU", out_activation_type="Identity",
                use_layernorm=False, residual_style=True)


def value_critic_config(cond_steps: int = 1) -> dict:
    return dict(cond_dim=OBS_DIM * cond_steps, mlp_dims=list(HIDDEN_DIMS), activation_type="Mish",
                use_layernorm=False, residual_style=True)


def q_critic_config() -> dict:
    """As the reference configs write it: residual_style=True, which CriticObsAct drops (it reads residual_tyle)."""
    return dict(cond_dim=OBS_DIM, mlp_dims=list(HIDDEN_DIMS), action_dim=ACTION_DIM, action_steps=HORIZON_STEPS,
                activation_type="Mish", use_layernorm=False, residual_style=True)


def network_entry(kind: str, config: dict, module: nn.Module, seed: int, cond_steps: int = 1) -> dict:
    """Config, state dict (reference names) and one forward pass of a reference network on fixed inputs."""
    generator = torch.Generator().manual_seed(seed)
    state = randn(generator, 5, cond_steps, OBS_DIM)
    with torch.no_grad():
        if kind == "diffusion_mlp":
            x = randn(generator, 5, HORIZON_STEPS, ACTION_DIM)
            t = torch.randint(0, DENOISING_STEPS, (5,), generator=generator)
            inputs, outputs = {"x": x, "t": t, "state": state}, {"output": module(x, t, cond=cond_of(state))}
        elif kind == "critic_obs":
            inputs, outputs = {"state": state}, {"output": module(cond_of(state))}
        elif kind == "double_critic_obs_act":
            actions = randn(generator, 5, config["action_steps"], ACTION_DIM).clamp(-1, 1)
            q1, q2 = module(cond_of(state), actions)
            inputs, outputs = {"state": state, "actions": actions}, {"q1": q1, "q2": q2}
        elif kind == "gaussian_mlp":
            mean, scale = module(cond_of(state))
            inputs, outputs = {"state": state}, {"mean": mean, "scale": scale}
        else:
            raise ValueError(kind)
    return {"kind": kind, "config": config, "state_dict": snapshot(dict(module.state_dict())),
            "forward": {"inputs": inputs, "outputs": outputs}}


def diffusion_schedule(model) -> dict:
    names = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
             "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "ddpm_var", "ddpm_logvar_clipped",
             "ddpm_mu_coef1", "ddpm_mu_coef2")
    return {name: getattr(model, name) for name in names}


def error_of(function) -> str:
    """The exception a reference call raises, as 'Type: message'."""
    try:
        function()
    except Exception as error:  # whatever the reference raises is the record
        return f"{type(error).__name__}: {error}"
    raise AssertionError("expected the reference call to fail")


# ---- DRWR ------------------------------------------------------------------------------------------------------
def drwr_fixture(ref, result_dir: str) -> dict:
    """One iteration of TrainRWRDiffusionAgent.run() on a scripted env: episodes, returns-to-go, standardized
    returns, weights, and the weighted diffusion loss with its drawn t and noise."""
    n_steps, n_envs, act_steps = 8, 3, 2
    train = dict(gamma=0.99, beta=10.0, max_reward_weight=100.0, batch_size=1000, update_epochs=1)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n_steps + 1, n_envs, 1, OBS_DIM))
    rewards = rng.normal(1.0, 1.0, size=(n_steps, n_envs)).round(3)
    terminated = np.zeros((n_steps, n_envs), dtype=bool)
    truncated = np.zeros((n_steps, n_envs), dtype=bool)
    terminated[2, 0] = True  # env 0: episode 0..2 (complete), 3..3 (one step: dropped), 4..7 (unfinished)
    truncated[3, 0] = True
    truncated[7, 1] = True  # env 1: episode 0..7 ended by the time limit
    terminated[0, 2] = True  # env 2: 0..0 (one step: dropped), 1..4 (complete), 5..7 (unfinished)
    terminated[4, 2] = True

    actor_config = diffusion_actor_config()
    actor = ref.DiffusionMLP(**actor_config)
    fill_parameters(actor, seed=11)
    model = ref.RWRDiffusion(network=actor, **DIFFUSION_MODEL)
    env = ScriptedVectorEnv(obs, rewards, terminated, truncated)
    agent = bare_agent(ref.TrainRWRAgent, result_dir, model=model, venv=env, n_steps=n_steps, n_envs=n_envs,
                       act_steps=act_steps, optimizer=NoOp(), lr_scheduler=NoOp(), **train)
    names = ("firsts_trajs", "episodes_start_end", "returns_trajs_split", "rewards_k_scaled", "inds_k", "samples_trajs")
    torch.manual_seed(0)
    np.random.seed(0)
    with LocalsTracer(ref.TrainRWRAgent.run, names) as tracer, CallRecorder(model, "loss") as loss_calls:
        agent.run()
    (loss_call,) = loss_calls.calls
    samples, cond, weights = loss_call["args"]
    with DrawReplay(loss_call["draws"]):
        replayed = model.loss(samples, cond, weights)
    torch.testing.assert_close(replayed, loss_call["output"], rtol=0, atol=0)

    raw_returns, standardized = tracer.bindings["returns_trajs_split"][-2:]
    return {
        "model_config": {**DIFFUSION_MODEL, "act_steps": act_steps},
        "train_config": train,
        "networks": {"actor": network_entry("diffusion_mlp", actor_config, actor, seed=101)},
        "rollout": {"obs": obs, "rewards": rewards, "terminated": terminated, "truncated": truncated,
                    "samples": tracer.final["samples_trajs"], "firsts": tracer.final["firsts_trajs"]},
        "outputs": {
            "episodes": np.array(tracer.final["episodes_start_end"], dtype=np.int64),
            "returns": raw_returns,
            "returns_standardized": standardized,
            "weights": tracer.final["rewards_k_scaled"],
            "batch_order": tracer.final["inds_k"],
        },
        "loss": {"inputs": {"samples": samples, "state": cond["state"], "weights": weights},
                 "draws": {"t": loss_call["draws"]["randint"][0], "noise": loss_call["draws"]["randn_like"][0]},
                 "output": loss_call["output"]},
    }


# ---- DAWR ------------------------------------------------------------------------------------------------------
def td_values_cases(ref) -> dict:
    """td_values on a (S=5, N=2) buffer: last step terminated in every env (no quirk), and not (bootstraps from
    V of the last state itself)."""
    rng = np.random.default_rng(1)
    states = rng.normal(size=(5, 2, 1, OBS_DIM))
    rewards = rng.normal(size=(5, 2)).round(3)
    values = rng.normal(size=(5, 2)).round(3).astype(np.float32)
    cases = {}
    for name, last_terminated in (("last_step_terminated", True), ("last_step_bootstraps_from_own_value", False)):
        terminated = np.zeros((5, 2), dtype=bool)
        terminated[1, 0] = True
        terminated[-1] = last_terminated
        tds = ref.td_values(states, rewards, terminated, values)
        cases[name] = {"inputs": {"rewards": rewards, "terminated": terminated, "state_values": values},
                       "output": tds}
    return cases


def dawr_fixture(ref, result_dir: str) -> dict:
    n_steps, n_envs = 6, 2
    train = dict(gamma=0.99, beta=10.0, max_adv_weight=100.0, batch_size=6, replay_ratio=1, critic_update_ratio=2,
                 buffer_size=100, scale_reward_factor=0.1, n_critic_warmup_itr=0)
    rng = np.random.default_rng(2)
    obs = rng.normal(size=(n_steps + 1, n_envs, 1, OBS_DIM))
    rewards = rng.normal(3.0, 1.0, size=(n_steps, n_envs)).round(3)
    terminated = np.zeros((n_steps, n_envs), dtype=bool)
    terminated[2, 0] = terminated[5, 0] = terminated[5, 1] = True  # no truncation; every env ends the buffer
    truncated = np.zeros((n_steps, n_envs), dtype=bool)

    actor_config, critic_config = diffusion_actor_config(), value_critic_config()
    actor, critic = ref.DiffusionMLP(**actor_config), ref.CriticObs(**critic_config)
    fill_parameters(actor, seed=21)
    fill_parameters(critic, seed=22)
    model = ref.AWRDiffusion(actor=actor, critic=critic, **DIFFUSION_MODEL)
    env = ScriptedVectorEnv(obs, rewards, terminated, truncated)
    agent = bare_agent(ref.TrainAWRAgent, result_dir, model=model, venv=env, n_steps=n_steps, n_envs=n_envs,
                       act_steps=HORIZON_STEPS, actor_optimizer=NoOp(), critic_optimizer=NoOp(),
                       actor_lr_scheduler=NoOp(), critic_lr_scheduler=NoOp(), **train)
    names = ("values_trajs", "td_trajs", "advantages_trajs", "inds", "advantages_b", "advantages_b_scaled")
    torch.manual_seed(0)
    np.random.seed(0)
    with (LocalsTracer(ref.TrainAWRAgent.run, names) as tracer, CallRecorder(model, "loss") as actor_calls,
          CallRecorder(model, "loss_critic") as critic_calls):
        agent.run()
    n_critic = len(critic_calls.calls)
    critic_batches = []
    for call, inds in zip(critic_calls.calls, tracer.bindings["inds"][:n_critic]):
        cond, targets = call["args"]
        with torch.no_grad():
            values = critic(cond)
        critic_batches.append({"indices": inds, "state": cond["state"], "targets": targets, "values": values,
                               "loss_broadcast": call["output"],
                               "loss_elementwise": ((values.view(-1) - targets) ** 2).mean()})
    actor_batches = []
    standardized = tracer.bindings["advantages_b"][1::2]
    for i, (call, inds) in enumerate(zip(actor_calls.calls, tracer.bindings["inds"][n_critic:])):
        actions, cond, weights = call["args"]
        with DrawReplay(call["draws"]):
            torch.testing.assert_close(model.loss(actions, cond, weights), call["output"], rtol=0, atol=0)
        actor_batches.append({"indices": inds, "state": cond["state"], "actions": actions,
                              "advantages": tracer.bindings["advantages_b"][2 * i],
                              "advantages_standardized": standardized[i],
                              "weights_unclipped": tracer.bindings["advantages_b_scaled"][i], "weights": weights,
                              "draws": {"t": call["draws"]["randint"][0], "noise": call["draws"]["randn_like"][0]},
                              "loss": call["output"]})
    return {
        "model_config": {**DIFFUSION_MODEL, "act_steps": HORIZON_STEPS},
        "train_config": {**train, "td_values_defaults": {"gamma": 0.99, "alpha": 0.95, "lam": 0.95}},
        "networks": {"actor": network_entry("diffusion_mlp", actor_config, actor, seed=201),
                     "critic": network_entry("critic_obs", critic_config, critic, seed=202)},
        "td_values": td_values_cases(ref),
        "rollout": {"obs": obs, "rewards": rewards, "terminated": terminated, "truncated": truncated,
                    "executed_actions": np.stack(env.actions)},
        "run": {"values": tracer.bindings["values_trajs"][0], "td_targets": tracer.bindings["td_trajs"][0],
                "values_after_critic_update": tracer.bindings["values_trajs"][1],
                "td_targets_after_critic_update": tracer.bindings["td_trajs"][1],
                "advantages": tracer.final["advantages_trajs"], "critic_batches": critic_batches,
                "actor_batches": actor_batches},
    }


def act_steps_errors(ref) -> dict:
    """What the reference raises when act_steps < horizon_steps in DAWR, DQL and IDQL."""
    act_steps = HORIZON_STEPS // 2
    generator = torch.Generator().manual_seed(3)
    cond = cond_of(randn(generator, BATCH, 1, OBS_DIM))
    executed = randn(generator, BATCH, act_steps, ACTION_DIM).clamp(-1, 1)
    actor = ref.DiffusionMLP(**diffusion_actor_config())
    awr = ref.AWRDiffusion(actor=actor, critic=ref.CriticObs(**value_critic_config()), **DIFFUSION_MODEL)
    q_config = {**q_critic_config(), "action_steps": act_steps}
    dql = ref.DQLDiffusion(actor=copy.deepcopy(actor), critic=ref.CriticObsAct(**q_config), **DIFFUSION_MODEL)
    idql = ref.IDQLDiffusion(actor=copy.deepcopy(actor), critic_q=ref.CriticObsAct(**q_config),
                             critic_v=ref.CriticObs(**value_critic_config()), **DIFFUSION_MODEL)
    zeros = torch.zeros(BATCH)
    return {
        "act_steps": act_steps,
        "dawr_actor_loss_on_executed_actions": error_of(lambda: awr.loss(executed, cond, torch.ones(BATCH))),
        "dql_actor_loss": error_of(lambda: dql.loss_actor(cond, 1.0, act_steps)),
        "dql_critic_loss": error_of(lambda: dql.loss_critic(cond, cond, executed, zeros, zeros, 0.99)),
        "idql_candidates": error_of(lambda: idql(cond, deterministic=False, num_sample=N_CANDIDATES)),
        "idql_actor_loss_on_executed_actions": error_of(lambda: idql.loss(executed, cond)),
    }


# ---- DQL -------------------------------------------------------------------------------------------------------
def replay_batch(seed: int, terminated_rows: tuple[int, ...]) -> dict:
    """A replayed batch: state, next_state (B, 1, Do), actions (B, Ta, Da), rewards and terminated (B,) floats."""
    generator = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(BATCH)
    terminated[list(terminated_rows)] = 1.0
    return {"state": randn(generator, BATCH, 1, OBS_DIM), "next_state": randn(generator, BATCH, 1, OBS_DIM),
            "actions": randn(generator, BATCH, HORIZON_STEPS, ACTION_DIM).clamp(-1, 1),
            "rewards": randn(generator, BATCH), "terminated": terminated}


def polyak_case(update, target: nn.Module, source: nn.Module, tau: float) -> dict:
    before = snapshot(dict(target.state_dict()))
    update(tau)
    return {"tau": tau, "target_before": before, "source": snapshot(dict(source.state_dict())),
            "target_after": snapshot(dict(target.state_dict()))}


def dql_fixture(ref) -> dict:
    gamma, eta, tau = 0.99, 1.0, 0.005
    actor_config, critic_config = diffusion_actor_config(), q_critic_config()
    actor, critic = ref.DiffusionMLP(**actor_config), ref.CriticObsAct(**critic_config)
    fill_parameters(actor, seed=31)
    model = ref.DQLDiffusion(actor=actor, critic=critic, **DIFFUSION_MODEL)
    fill_parameters(model.critic, seed=32)
    fill_parameters(model.critic_target, seed=33)  # the target differs from the critic, as after training
    networks = {"actor": network_entry("diffusion_mlp", actor_config, actor, seed=301),
                "critic": network_entry("double_critic_obs_act", critic_config, model.critic, seed=302),
                "critic_target": network_entry("double_critic_obs_act", critic_config, model.critic_target, seed=303)}
    batch = replay_batch(seed=34, terminated_rows=(1, 4))
    cond, next_cond = cond_of(batch["state"]), cond_of(batch["next_state"])

    torch.manual_seed(1)
    with (CallRecorder(model, "forward") as next_action_calls, DrawRecorder() as draws,
          recording_outputs(critic=model.critic, critic_target=model.critic_target) as q):
        critic_loss = model.loss_critic(cond, next_cond, batch["actions"], batch["rewards"], batch["terminated"],
                                        gamma)
    (current_q1, current_q2), (next_q1, next_q2) = q["critic"][0], q["critic_target"][0]
    critic_case = {
        "inputs": {**batch, "gamma": gamma}, "draws": draws.used(),
        "next_actions": next_action_calls.calls[0]["output"],
        "current_q1": current_q1, "current_q2": current_q2, "next_q1": next_q1, "next_q2": next_q2,
        "target_q": batch["rewards"] + gamma * torch.min(next_q1, next_q2) * (1 - batch["terminated"]),
        "loss": critic_loss,
    }

    actor_cases = {}
    for name, numpy_seed in (("q1_over_q2", 0), ("q2_over_q1", 1)):  # np.random.uniform() = 0.549, then 0.417
        torch.manual_seed(2)
        np.random.seed(numpy_seed)
        with (CallRecorder(model, "forward_train") as chunk_calls, CallRecorder(model, "loss") as bc_calls,
              DrawRecorder() as draws, recording_outputs(critic=model.critic) as q):
            actor_loss = model.loss_actor(cond, eta, HORIZON_STEPS)
        (bc_args, bc_loss) = bc_calls.live[0]
        chunk = bc_args[0]
        if not torch.equal(chunk.detach(), chunk_calls.calls[0]["output"][:, :HORIZON_STEPS]):
            raise AssertionError("the reference's BC term should read the freshly drawn chunk")
        bc_grad_chunk = torch.autograd.grad(bc_loss, chunk, retain_graph=True)[0]
        q1, q2 = q["critic"][0]
        uniform = draws.draws["uniform"][0]
        q_loss = -q1.mean() / q2.abs().mean() if uniform > 0.5 else -q2.mean() / q1.abs().mean()
        torch.testing.assert_close(actor_loss.detach(), bc_loss.detach() + eta * q_loss, rtol=0, atol=1e-6)
        actor_cases[name] = {
            "inputs": {"state": batch["state"], "eta": eta, "act_steps": HORIZON_STEPS},
            "draws": draws.used(),
            "chunk": chunk_calls.calls[0]["output"], "bc_chunk": snapshot(chunk),
            "bc_chunk_requires_grad": bool(chunk.requires_grad),
            "bc_grad_wrt_chunk_norm": bc_grad_chunk.norm().item(),
            "bc_draws": {"t": bc_calls.calls[0]["draws"]["randint"][0],
                         "noise": bc_calls.calls[0]["draws"]["randn_like"][0]},
            "q1": q1, "q2": q2, "bc_loss": bc_loss, "q_loss": q_loss, "loss": actor_loss,
        }
    return {
        "model_config": {**DIFFUSION_MODEL, "act_steps": HORIZON_STEPS},
        "networks": networks,
        "critic_loss": critic_case,
        "actor_loss": actor_cases,
        "target_update": polyak_case(model.update_target_critic, model.critic_target, model.critic, tau),
    }


# ---- IDQL ------------------------------------------------------------------------------------------------------
def idql_candidates_case(ref, model, cond: dict, deterministic: bool, seed: int) -> dict:
    torch.manual_seed(seed)
    with (CallRecorder(ref.RWRDiffusion, "forward") as candidate_calls, DrawRecorder() as draws,
          recording_outputs(target_q=model.target_q, critic_v=model.critic_v) as critics):
        chosen = model(cond, deterministic=deterministic, num_sample=N_CANDIDATES, critic_hyperparam=0.7,
                       use_expectile_exploration=True)
    q1, q2 = critics["target_q"][0]
    case = {"inputs": {"state": cond["state"], "deterministic": deterministic, "num_sample": N_CANDIDATES,
                       "critic_hyperparam": 0.7},
            "draws": draws.used(), "candidates": candidate_calls.calls[0]["output"], "q1": q1, "q2": q2,
            "chosen": chosen}
    if not deterministic:
        case["v"] = critics["critic_v"][0]
    return case


def idql_fixture(ref) -> dict:
    gamma, tau = 0.99, 0.001
    actor_config, q_config, v_config = diffusion_actor_config(), q_critic_config(), value_critic_config()
    actor, critic_q, critic_v = ref.DiffusionMLP(**actor_config), ref.CriticObsAct(**q_config), ref.CriticObs(**v_config)
    fill_parameters(actor, seed=41)
    fill_parameters(critic_v, seed=42)
    model = ref.IDQLDiffusion(actor=actor, critic_q=critic_q, critic_v=critic_v, **DIFFUSION_MODEL)
    fill_parameters(model.critic_q, seed=43)
    fill_parameters(model.target_q, seed=44)
    generator = torch.Generator().manual_seed(45)
    acting_cond = cond_of(randn(generator, 3, 1, OBS_DIM))

    # Shift V's output so that Q - V of the first state's exploring candidates has both signs (weights 0.7 and 0.3
    # both occur), V landing halfway between two neighbouring candidates' Q - V, away from a sign that rounding flips.
    probe = idql_candidates_case(ref, model, acting_cond, deterministic=False, seed=5)
    gap = (torch.min(probe["q1"], probe["q2"]) - probe["v"].view(-1)).view(N_CANDIDATES, -1)[:, 0].sort().values
    middle = gap[N_CANDIDATES // 4: 3 * N_CANDIDATES // 4 + 1]
    widest = (middle[1:] - middle[:-1]).argmax()
    with torch.no_grad():
        model.critic_v.Q1.layers[-2].bias += (middle[widest] + middle[widest + 1]) / 2

    networks = {"actor": network_entry("diffusion_mlp", actor_config, actor, seed=401),
                "critic_q": network_entry("double_critic_obs_act", q_config, model.critic_q, seed=402),
                "target_q": network_entry("double_critic_obs_act", q_config, model.target_q, seed=403),
                "critic_v": network_entry("critic_obs", v_config, model.critic_v, seed=404)}
    batch = replay_batch(seed=46, terminated_rows=(0, 3))
    cond, next_cond = cond_of(batch["state"]), cond_of(batch["next_state"])

    with recording_outputs(target_q=model.target_q, critic_v=model.critic_v) as critics:
        v_loss = model.loss_critic_v(cond, batch["actions"])
    q1, q2 = critics["target_q"][0]
    v = critics["critic_v"][0]
    v_case = {"inputs": {"state": batch["state"], "actions": batch["actions"]}, "target_q1": q1, "target_q2": q2,
              "v": v, "advantages": torch.min(q1, q2) - v.view(-1), "expectile": 0.8, "loss": v_loss}

    with recording_outputs(critic_q=model.critic_q, critic_v=model.critic_v) as critics:
        q_loss = model.loss_critic_q(cond, next_cond, batch["actions"], batch["rewards"], batch["terminated"], gamma)
    q1, q2 = critics["critic_q"][0]
    next_v = critics["critic_v"][0]
    q_case = {"inputs": {**batch, "gamma": gamma}, "q1": q1, "q2": q2, "next_v": next_v,
              "target": batch["rewards"] + gamma * next_v.view(-1) * (1 - batch["terminated"]), "loss": q_loss}

    torch.manual_seed(6)
    with CallRecorder(model, "loss") as bc_calls:
        model.loss(batch["actions"], cond)
    bc_call = bc_calls.calls[0]
    bc_case = {"inputs": {"state": batch["state"], "actions": batch["actions"]},
               "draws": {"t": bc_call["draws"]["randint"][0], "noise": bc_call["draws"]["randn_like"][0]},
               "loss": bc_call["output"]}

    explore = idql_candidates_case(ref, model, acting_cond, deterministic=False, seed=5)
    advantages = (torch.min(explore["q1"], explore["q2"]) - explore["v"].view(-1)).view(N_CANDIDATES, -1)
    if not (advantages[:, 0] > 0).any() or (advantages[:, 0] > 0).all() or advantages.abs().min() < MIN_ABS_ADVANTAGE:
        raise AssertionError("the first state's candidates should have advantages of both signs, none near 0")
    explore["advantages"] = advantages
    explore["chosen_index"] = explore["draws"]["multinomial"][0].view(-1)
    evaluate = idql_candidates_case(ref, model, acting_cond, deterministic=True, seed=7)
    evaluate["chosen_index"] = torch.min(evaluate["q1"], evaluate["q2"]).view(N_CANDIDATES, -1).argmax(0)
    return {
        "model_config": {**DIFFUSION_MODEL, "act_steps": HORIZON_STEPS},
        "train_config": {"eval_sample_num": N_CANDIDATES, "critic_tau": tau, "use_expectile_exploration": True,
                         "eval_deterministic": True},
        "networks": networks,
        "v_loss": v_case,
        "q_loss": q_case,
        "actor_loss": bc_case,
        "target_update": polyak_case(model.update_target_critic, model.target_q, model.critic_q, tau),
        "explore": explore,
        "evaluate": evaluate,
    }


# ---- Gaussian PPO ----------------------------------------------------------------------------------------------
def gaussian_ppo_fixture(ref) -> dict:
    """PPO_Gaussian.loss on a batch whose ratio is not 1: old log-probs recorded, then the actor perturbed."""
    cond_steps, batch_size = 2, 8
    ent_coef, vf_coef, bc_loss_coeff = 0.01, 0.5, 0.0
    actor_config = dict(action_dim=ACTION_DIM, horizon_steps=HORIZON_STEPS, cond_dim=OBS_DIM * cond_steps,
                        mlp_dims=list(HIDDEN_DIMS), activation_type="Mish", tanh_output=True, residual_style=False,
                        use_layernorm=False, fixed_std=0.1, learn_fixed_std=True, std_min=0.01, std_max=0.2)
    critic_config = value_critic_config(cond_steps)
    model_config = dict(clip_ploss_coef=0.1, clip_vloss_coef=None, norm_adv=True, horizon_steps=HORIZON_STEPS,
                        device="cpu", randn_clip_value=3)
    actor, critic = ref.GaussianMLP(**actor_config), ref.CriticObs(**critic_config)
    fill_parameters(actor, seed=51, skip=("logvar",))
    fill_parameters(critic, seed=52)
    with torch.no_grad():
        actor.logvar.copy_(torch.log(torch.tensor([0.012, 0.15]) ** 2))
    model = ref.PPOGaussian(actor=actor, critic=critic, **model_config)
    generator = torch.Generator().manual_seed(53)
    cond = cond_of(randn(generator, batch_size, cond_steps, OBS_DIM))
    torch.manual_seed(8)
    with torch.no_grad():
        actions = model(cond, deterministic=False)
        actions[-2:] += 0.8  # far from the mean: log-probs below the clamp at -5, before and after the update
        old_log_probs, old_entropy, old_std = model.get_logprobs(cond, actions)
        old_values = model.critic(cond).view(-1)
    networks = {"actor": network_entry("gaussian_mlp", actor_config, actor, seed=501, cond_steps=cond_steps),
                "critic": network_entry("critic_obs", critic_config, critic, seed=502, cond_steps=cond_steps)}

    with torch.no_grad():  # actor and critic after some updates
        for param in actor.mlp_mean.parameters():
            param.add_(0.008 * randn(generator, *param.shape))
        actor.logvar.add_(torch.tensor([0.3, -0.2]))
        for param in critic.parameters():
            param.add_(0.1 * randn(generator, *param.shape))
    networks["actor_updated"] = network_entry("gaussian_mlp", actor_config, actor, seed=501, cond_steps=cond_steps)
    networks["critic_updated"] = network_entry("critic_obs", critic_config, critic, seed=502, cond_steps=cond_steps)
    returns = randn(generator, batch_size)
    advantages = randn(generator, batch_size)
    with torch.no_grad():
        new_log_probs, new_entropy, new_std = model.get_logprobs(cond, actions)
        new_values = model.critic(cond).view(-1)
    inputs = {"state": cond["state"], "actions": actions, "returns": returns, "old_values": old_values,
              "advantages": advantages, "old_log_probs": old_log_probs}
    losses = {}
    for name, clip_vloss in (("value_unclipped", None), ("value_clipped", 0.2)):
        model.clip_vloss_coef = clip_vloss
        pg_loss, entropy_loss, v_loss, clipfrac, approx_kl, ratio, bc_loss, std = model.loss(
            cond, actions, returns, old_values, advantages, old_log_probs)
        losses[name] = {"clip_vloss_coef": clip_vloss, "pg_loss": pg_loss, "entropy_loss": entropy_loss,
                        "v_loss": v_loss, "clipfrac": clipfrac, "approx_kl": approx_kl, "ratio_mean": ratio,
                        "bc_loss": bc_loss, "std": std,
                        "agent_loss": pg_loss + entropy_loss * ent_coef + v_loss * vf_coef + bc_loss * bc_loss_coeff}
    clamped_new, clamped_old = new_log_probs.clamp(-5, 2), old_log_probs.clamp(-5, 2)
    if not ((new_log_probs > 2).any() and (old_log_probs > 2).any() and (new_log_probs < -5).any()
            and 0 < losses["value_clipped"]["clipfrac"] < 1
            and losses["value_clipped"]["v_loss"] != losses["value_unclipped"]["v_loss"]):
        raise AssertionError("the Gaussian PPO batch should hit both log-prob clamps and clip some ratios")
    return {
        "model_config": model_config,
        "train_config": {"ent_coef": ent_coef, "vf_coef": vf_coef, "bc_loss_coeff": bc_loss_coeff},
        "networks": networks,
        "inputs": inputs,
        "old": {"log_probs": old_log_probs, "entropy": old_entropy, "std": old_std},
        "new": {"log_probs": new_log_probs, "entropy": new_entropy, "std": new_std,
                "ratio": (clamped_new - clamped_old).exp(), "values": new_values},
        "losses": losses,
        "errors": {
            "use_bc_loss": error_of(lambda: model.loss(cond, actions, returns, old_values, advantages, old_log_probs,
                                                       use_bc_loss=True)),
            "residual_style_with_fixed_std": error_of(lambda: ref.GaussianMLP(**{**actor_config,
                                                                                 "residual_style": True})),
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="checkout of irom-lab/dppo (git archive HEAD | tar -x)")
    parser.add_argument("--git-dir", default=DEFAULT_GIT_DIR, help="the reference's git directory (for the commit)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    commit = reference_commit(args.reference, args.git_dir)
    ref = import_reference(os.path.abspath(args.reference))
    schedule_model = ref.RWRDiffusion(network=ref.DiffusionMLP(**diffusion_actor_config()), **DIFFUSION_MODEL)
    with tempfile.TemporaryDirectory() as result_dir:
        fixture = {
            "meta": {"reference": "irom-lab/dppo", "commit": commit, "torch": torch.__version__,
                     "numpy": np.__version__, "diffusion_schedule": diffusion_schedule(schedule_model),
                     "act_steps_below_horizon_errors": act_steps_errors(ref)},
            "drwr": drwr_fixture(ref, result_dir),
            "dawr": dawr_fixture(ref, result_dir),
            "dql": dql_fixture(ref),
            "idql": idql_fixture(ref),
            "gaussian_ppo": gaussian_ppo_fixture(ref),
        }
    fixture = to_fixture(fixture)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(fixture, args.out)
    torch.load(args.out, weights_only=True)
    print(f"wrote {args.out} (reference {commit})")


if __name__ == "__main__":
    main()
