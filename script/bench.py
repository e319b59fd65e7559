"""Benchmark of fine-tuning's hot paths, measured in one run on one machine.

    python script/bench.py                            # the paper's Gym config: Hopper, 40 envs x 500 chunk-steps
    python script/bench.py --algorithms dql,idql,awr  # also one iteration of each, at its paper settings
    python script/bench.py --threads 2 --busy 1       # the same with one other CPU-bound process running
    python script/bench.py --json bench.json train.grad_chunk_size=500   # trailing args: Hydra overrides of DPPO
    python script/bench.py --tiny --algorithms dql,idql,awr   # tiny networks and envs: seconds (the tests run it)
    python script/bench.py --algorithms dsrl           # DSRL-NA's iteration, and DSRL-SAC's step beside SB3's SAC
    python script/bench.py --dsrl-tasks hopper,can     # DSRL's update cost per env step at each task's settings
    python script/bench.py --no-dppo --dsrl-tasks walker2d   # the same without DPPO's figures and ratios

Figures (docs/PERFORMANCE.md reads them):
- sampling: median latency of `model.explore` (all K denoising steps, the K' fine-tuned ones kept) for 10, 40
  and 160 envs' observations, in each precision (rollouts sample in the run's), on train.sampling_threads.
- log_probs: (sample, denoising step) terms per second of `model.log_probs` over one minibatch, no graph.
- update, per precision (fp32 and bf16, side by side): seconds of `PPOAgent.minibatch_update` (forward,
  backward, optimizer step) on one minibatch of the config's size, and its matmul roofline: every matrix
  product one such update runs (recorded at dispatch, forward and backward, with its shapes and dtype: bf16
  autocast keeps the output layers in float32) timed alone as a `torch.mm` and summed. Their ratio is the
  fraction of the machine's matmul speed the update reaches; `precision` says which precision the config runs
  (its default on this machine).
- env: env steps per second of the configured vector env stepping random action chunks and nothing else.
- iteration, per precision: one whole fine-tuning iteration (`collect_rollout` then `learn`), every phase
  timed where it runs (none is a remainder): rollout env_wait (the main process in `step_async` /
  `step_wait`), sampling, reward scaling, bookkeeping (stacking steps, episode statistics); update GAE, old
  log-probabilities, loss forward, backward, optimizer steps. `unaccounted` is the iteration's time outside
  every phase (Python glue: index shuffling, minibatch gathers, metrics). `rollout_vs_bound` is the rollout
  time over max(env-only time, sampling-only time) for the same steps, both measured above.
- algorithms (with --algorithms): one iteration of DQL, IDQL or DAWR at its paper settings after critic
  warm-up (the actor trains), in the config's precision, with its phases (sampling, env_wait, replay
  sampling, critic and actor loss forwards, backward, optimizer, target updates) and its wall time per env
  step next to DPPO's iteration in the same precision. For DQL and IDQL also the matmul roofline of their
  update: the products of the first gradient step (recorded as above) timed alone, times the gradient steps;
  per env step against DPPO's whole iteration, it bounds from below the ratio any implementation of those
  settings could reach on this machine. DSRL (DSRL-NA at the reference's Hopper settings) also gives its time per
  gradient step (the update's time over its SAC steps, noise-critic steps included) and its roofline counts one
  SAC step's products (the decoding of s' included) per SAC step, the noise critic's steps not.
- dsrl_costs (with --dsrl-tasks): per task, at its DSRL settings (network width, train_freq, DDIM steps), one
  gradient step of each variant (DSRL-NA's with the decoding of s') and DSRL-NA's noise-critic step (with the
  decoding of fresh noise), each with its matmul roofline, and the update time per env step those settings imply,
  next to DPPO's whole iteration per env step: what a run on the task costs before it is started.
- dsrl_sac_step (with --algorithms dsrl): one DSRL-SAC gradient step (batch 256, 3 x 128 networks at full size) in
  each precision and one step of Stable-Baselines3's SAC with the same networks (`SAC.train(1)`, float32, the
  reference's baseline, script/reference/sb3_dsrl_sac.py), timed alternately in the same process; their ratios.

The machine, torch version, threads and config are written with the figures (JSON with --json, a table on
stdout). CUDA timings synchronize the device around every timed call.
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from datetime import datetime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
from dppo.openmp import set_openmp_wait_defaults  # noqa: E402

set_openmp_wait_defaults()  # script/run.py's, so the bench measures them
if __name__ == "__main__":  # and its allocator (dppo/allocator.py)
    from dppo.allocator import use_tcmalloc

    use_tcmalloc()

import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from agent.finetune import collection as collection_module  # noqa: E402
from agent.finetune import dql as dql_module  # noqa: E402
from agent.finetune import dsrl as dsrl_module  # noqa: E402
from agent.finetune import idql as idql_module  # noqa: E402
from agent.finetune import ppo as ppo_module  # noqa: E402
from dppo.allocator import loaded_allocator  # noqa: E402
from dppo.config import register_resolvers, validate_config  # noqa: E402
from dppo.optimizers import adamw  # noqa: E402
from dppo.precision import PRECISIONS, autocast, native_bf16  # noqa: E402
from dppo.runtime import available_cores, set_threads, torch_threads  # noqa: E402

CONFIG_NAME = "ft_ppo_diffusion_mlp"
aten = torch.ops.aten
MATMUL_OPS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)
ALGORITHM_CONFIGS = {"dql": "ft_dql_diffusion_mlp", "idql": "ft_idql_diffusion_mlp", "awr": "ft_awr_diffusion_mlp",
                     "dsrl": "ft_dsrl_diffusion_mlp"}
FULL = {"sampling_envs": (10, 40, 160), "repeats": 20, "update_repeats": 5, "overrides": [],
        "probe_shape": (50000, 512), "probe_states": 40, "probe_batch": 512}
TINY_NETWORKS = ["model.network.mlp_dims=[32,32,32]", "base_policy_path=null", "env.n_envs=2",
                 "env.asynchronous=false", "train.n_steps=3", "denoising_steps=6"]
TINY = {
    "probe_shape": (64, 32), "probe_states": 4, "probe_batch": 8,
    "sampling_envs": (2, 4),
    "repeats": 2,
    "update_repeats": 2,
    "overrides": TINY_NETWORKS + ["critic.mlp_dims=[32,32,32]", "train.batch_size=4", "train.update_epochs=1",
                                  "ft_denoising_steps=3"],
    "algorithm_overrides": {
        "dql": TINY_NETWORKS + ["critic.mlp_dims=[32,32,32]", "train.batch_size=4"],
        "idql": TINY_NETWORKS + ["critic_q.mlp_dims=[32,32,32]", "critic_v.mlp_dims=[32,32,32]", "train.batch_size=4",
                                 "train.replay_ratio=8"],
        "awr": TINY_NETWORKS + ["critic.mlp_dims=[32,32,32]", "train.batch_size=4"],
        "dsrl": TINY_NETWORKS + ["critic.mlp_dims=[32,32,32]", "noise_actor.mlp_dims=[32,32,32]",
                                 "train.batch_size=4", "train.utd=2", "train.noise_critic_grad_steps=1",
                                 "train.train_freq=1"],
    },
}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn, repeats: int, device: str) -> float:
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class PhaseClock:
    """Wall time and call count of chosen functions, by phase name, while the clock is open (a context manager).

    `wrap(owner, "step", "env_step")` replaces owner.step (an object's method, or a module's function, e.g.
    `torch.autograd.backward`) by a timed call until the clock closes. A wrapped function called from inside
    another wrapped one counts in the outer phase only.
    """

    def __init__(self, device: str):
        self.device = device
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.active = None
        self.patched = []

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if self.active is not None:
                return original(*args, **kwargs)
            self.active = phase
            synchronize(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds[phase] += time.perf_counter() - start
                self.calls[phase] += 1
                self.active = None

        self.patched.append((owner, name, owner.__dict__.get(name) if hasattr(owner, "__dict__") else original))
        setattr(owner, name, timed)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self.patched):
            if original is None:
                delattr(owner, name)  # an instance attribute shadowing its class's method
            else:
                setattr(owner, name, original)
        self.patched = []


def compose_cfg(overrides: list[str], logdir: str, config_name: str = CONFIG_NAME):
    register_resolvers()
    with initialize_config_dir(config_dir=os.path.join(REPO, "cfg"), version_base=None):
        cfg = compose(config_name=config_name, overrides=overrides + [
            f"logdir={logdir}", "wandb=null", "train.eval_interval=null", "train.n_train_itr=1"])
    validate_config(cfg)
    return cfg


def random_obs(model, n: int, device: str) -> dict:
    return {"state": torch.randn(n, model.cond_steps, model.obs_dim, device=device)}


def bench_sampling(model, sizes, repeats: int, device: str, precision: str, threads: int | None) -> dict:
    """Median seconds of one `explore` call per batch size, its forward passes in `precision`, on `threads`
    torch threads (the config's train.sampling_threads, as rollouts sample)."""
    result = {}
    for n in sizes:
        obs = random_obs(model, n, device)
        with torch.no_grad(), autocast(precision, device), torch_threads(threads):
            result[str(n)] = median_seconds(lambda: model.explore(obs), repeats, device)
    return result


def minibatch(model, batch: int, device: str) -> tuple:
    """A minibatch as a rollout gives it: random observations with the policy's own chains, random returns,
    values and advantages, old log-probabilities as the policy computes them."""
    obs = random_obs(model, batch, device)
    with torch.no_grad():
        _, stored = model.explore(obs)
        old_log_probs = model.log_probs(obs, stored)
    returns, values, advantages = (torch.randn(batch, device=device) for _ in range(3))
    return obs, stored, returns, values, advantages, old_log_probs


class MatmulRecorder(TorchDispatchMode):
    """Counts the matrix products torch runs while it is active, forward and backward, whoever calls them (Linear
    layers, autograd, the losses): {(m, k, n, dtype): products}, each a (m x k)(k x n) product; a batched product
    counts once per matrix of the batch. Use as a context manager, or `start()` / `stop()` across calls."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in MATMUL_OPS:
            a, b = args[-2], args[-1]  # mm(a, b), addmm(bias, a, b), bmm(a, b), baddbmm(input, a, b)
            self.counts[(a.shape[-2], a.shape[-1], b.shape[-1], str(a.dtype).removeprefix("torch."))] += (
                a.shape[0] if a.dim() == 3 else 1)
        return func(*args, **(kwargs or {}))

    def start(self) -> None:
        if not self.active:
            self.__enter__()
            self.active = True

    def stop(self) -> None:
        if self.active:
            self.__exit__(None, None, None)
            self.active = False


def matmul_seconds(counts: Counter, repeats: int, device: str) -> float:
    """The matmul roofline of recorded products: for each (m, k, n, dtype), the median time of one `torch.mm` of
    contiguous random (m x k) and (k x n) matrices in that dtype, times its count; summed."""
    total = 0.0
    for (m, k, n, dtype), count in counts.items():
        a = torch.randn(m, k, device=device, dtype=getattr(torch, dtype))
        b = torch.randn(k, n, device=device, dtype=a.dtype)
        total += count * median_seconds(lambda: torch.mm(a, b), repeats, device)
    return total


@contextlib.contextmanager
def running_in(agent, precision: str):
    """The agent's updates in `precision` for the duration."""
    saved, agent.precision = agent.precision, precision
    try:
        yield
    finally:
        agent.precision = saved


def bench_update(agent, repeats: int, device: str) -> dict:
    """The minibatch update in each precision, on the same minibatch and weights, next to its roofline."""
    model, batch = agent.model, agent.cfg.train.batch_size
    data = minibatch(model, batch, device)
    terms = batch * model.ft_denoising_steps
    with torch.no_grad():
        log_prob_seconds = median_seconds(lambda: model.log_probs(data[0], data[1]), repeats, device)
    state = {name: module.state_dict() for name, module in agent.checkpointed_modules().items()}
    result = {"minibatch_samples": batch, "terms": terms, "log_probs_terms_per_s": terms / log_prob_seconds}
    for precision in PRECISIONS:
        with running_in(agent, precision):
            update_seconds = median_seconds(lambda: agent.minibatch_update(*data), repeats, device)
            with MatmulRecorder() as recorder:
                agent.minibatch_update(*data)
        for name, module in agent.checkpointed_modules().items():  # the same weights for the next precision
            module.load_state_dict(state[name])
        roofline_seconds = matmul_seconds(recorder.counts, repeats, device)
        result[precision] = {
            "update_seconds": update_seconds,
            "update_terms_per_s": terms / update_seconds,
            "roofline_seconds": roofline_seconds,
            "matmul_products": sum(recorder.counts.values()),
            "roofline_terms_per_s": terms / roofline_seconds,
            "update_vs_roofline": roofline_seconds / update_seconds,
        }
    result["bf16_vs_fp32"] = result["bf16"]["update_seconds"] / result["fp32"]["update_seconds"]
    return result


def bench_probes(agent, mode: dict, device: str) -> dict:
    """Side measurements behind the choices docs/PERFORMANCE.md explains (medians, ms):
    - elementwise: `clamp_min` over a (rows, width) float32 tensor allocating its output, and writing into memory
      already held (what the allocator decides: glibc maps and page-faults large blocks anew on every op);
    - sampling_threads: one bf16 `explore` for `probe_states` states on 1 thread and on the job's threads;
    - adamw: one AdamW step over the actor's parameters, torch's fused kernel and the per-parameter loop;
    - bf16_log_probs: on one minibatch of the policy's own chains, |bf16 - fp32| log-probs (mean, max), and after
      one fp32 AdamW step (lr 1e-4) on a PPO loss, the correlation and mean error of the change of the log-probs
      measured in bf16 against the change measured in fp32 (what the PPO ratio sees)."""
    repeats, model = mode["repeats"], agent.model
    x = torch.randn(*mode["probe_shape"], device=device)
    out = torch.empty_like(x)
    probes = {"elementwise_ms": {
        "allocating": median_seconds(lambda: x.clamp_min(0), repeats, device) * 1e3,
        "into_held_memory": median_seconds(lambda: torch.clamp_min(x, 0, out=out), repeats, device) * 1e3}}
    obs = random_obs(model, mode["probe_states"], device)
    probes["sampling_threads_ms"] = {}
    for threads in (1, torch.get_num_threads()):
        with torch.no_grad(), autocast("bf16", device), torch_threads(threads):
            probes["sampling_threads_ms"][str(threads)] = median_seconds(lambda: model.explore(obs), repeats, device) * 1e3
    parameters = model.actor_parameters()
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    saved = [parameter.detach().clone() for parameter in parameters]
    optimizers = {"fused": adamw(parameters, lr=1e-12, weight_decay=0.01, device=device),  # what the runs use
                  "looped": torch.optim.AdamW(parameters, lr=1e-12, weight_decay=0.01, foreach=False)}
    probes["adamw_step_ms"] = {name: median_seconds(optimizer.step, repeats, device) * 1e3
                               for name, optimizer in optimizers.items()}
    probes["bf16_log_probs"] = bf16_log_prob_accuracy(agent, mode["probe_batch"], device)
    with torch.no_grad():
        for parameter, value in zip(parameters, saved):
            parameter.copy_(value)
            parameter.grad = None
    return probes


def bf16_log_prob_accuracy(agent, batch: int, device: str) -> dict:
    """`bench_probes`' bf16_log_probs; the policy's weights change (the caller restores them)."""
    model = agent.model
    obs, stored, returns, values, advantages, old = minibatch(model, batch, device)

    def log_probs(precision):
        with torch.no_grad(), autocast(precision, device):
            return model.log_probs(obs, stored)

    before = {precision: log_probs(precision) for precision in PRECISIONS}
    optimizer = torch.optim.AdamW(model.actor_parameters(), lr=1e-4)
    loss = ppo_module.ppo_loss(model, agent.critic, obs, stored, returns, values, advantages, old + 0.003,
                               agent.settings)
    optimizer.zero_grad()
    loss.pg_loss.backward()
    optimizer.step()
    change = {precision: (log_probs(precision) - before[precision]).flatten() for precision in PRECISIONS}
    difference = (before["bf16"] - before["fp32"]).abs()
    return {"abs_difference_mean": difference.mean().item(), "abs_difference_max": difference.max().item(),
            "change_correlation": torch.corrcoef(torch.stack([change["fp32"], change["bf16"]]))[0, 1].item(),
            "change_error_mean": (change["bf16"] - change["fp32"]).abs().mean().item(),
            "change_mean_abs": change["fp32"].abs().mean().item()}


def bench_env(agent, n_steps: int, device: str) -> dict:
    """The vector env alone: n_steps random action chunks (uniform in the normalized action box)."""
    venv, model = agent.venv, agent.model
    venv.reset(seed=0)
    shape = (agent.n_envs, agent.act_steps, model.action_dim)
    synchronize(device)
    start = time.perf_counter()
    env_steps = 0
    for _ in range(n_steps):
        result = venv.step(torch.rand(shape, device=device) * 2 - 1)
        env_steps += int(result.n_executed.sum())
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"chunk_steps": n_steps, "env_steps": env_steps, "seconds": seconds, "env_steps_per_s": env_steps / seconds}


def wrap_rollout_phases(clock: PhaseClock, agent) -> None:
    """The phases every algorithm's rollout has."""
    for method in ("step_async", "step_wait"):
        clock.wrap(agent.venv, method, "env_wait")
    clock.wrap(agent, "explore", "sampling")
    clock.wrap(agent, "scale_rewards", "reward_scaling")
    clock.wrap(collection_module, "stack_steps", "rollout_bookkeeping")
    clock.wrap(agent.tracker, "update", "rollout_bookkeeping")


def wrap_update_phases(clock: PhaseClock, agent) -> None:
    """Backward passes and optimizer steps, whatever the algorithm."""
    clock.wrap(torch.autograd, "backward", "backward")
    for optimizer in agent.optimizers.values():
        clock.wrap(optimizer, "step", "optimizer")
    clock.wrap(torch.nn.utils, "clip_grad_norm_", "optimizer")


def timed_iteration(agent, clock: PhaseClock, device: str) -> dict:
    """One iteration (`collect_rollout`, then `learn`: replay add for off-policy agents, update) with the clock's
    phases."""
    obs = agent.reset_envs()
    synchronize(device)
    start = time.perf_counter()
    with clock:
        wrap_rollout_phases(clock, agent)
        wrap_update_phases(clock, agent)
        for owner, name, phase in ITERATION_PHASES[type(agent).__name__](agent):
            clock.wrap(owner, name, phase)
        rollout, _, rollout_metrics = agent.collect_rollout(obs)
        synchronize(device)
        rollout_seconds = time.perf_counter() - start
        with warnings.catch_warnings():  # the clock's timed optimizer.step looks like an override to the LR schedulers
            warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")
            metrics = agent.learn(rollout)  # as a run learns: replay add (off-policy), update, NaN check, LR step
        synchronize(device)
    total = time.perf_counter() - start
    phases = dict(clock.seconds)
    env_steps = rollout_metrics["iteration_env_steps"]
    return {
        "precision": agent.precision,
        "env_steps": env_steps,
        "rollout_seconds": rollout_seconds,
        "update_seconds": total - rollout_seconds,
        "total_seconds": total,
        "seconds_per_env_step": total / env_steps,
        "phases": phases,
        "calls": dict(clock.calls),
        "unaccounted_seconds": total - sum(phases.values()),
        "gradient_steps": metrics.get("gradient_steps", metrics.get("minibatch_updates")),
    }


def ppo_phases(agent):
    return [(ppo_module, "gae_from_critic", "gae"),
            (agent.model, "log_probs", "old_log_probs"),  # inside the loss it counts as loss_forward
            (ppo_module, "ppo_loss", "loss_forward")]


def dql_phases(agent):
    """The target's next actions are the policy's `explore` outside the rollout; the actor's forward is the
    differentiable chain and the BC loss on it."""
    return [(agent.replay, "sample", "replay_sample"), (agent.model, "explore_actions", "target_actions"),
            (agent.critic, "forward", "critic_forward"), (agent.critic_target, "forward", "critic_forward"),
            (agent.model, "sample_differentiable", "actor_chain_forward"), (agent.model, "bc_loss", "actor_bc_forward"),
            (dql_module, "soft_update", "target_update")]


def idql_phases(agent):
    return [(agent.replay, "sample", "replay_sample"), (agent.critic_q, "forward", "critic_forward"),
            (agent.target_q, "forward", "critic_forward"), (agent.critic_v, "forward", "critic_forward"),
            (agent.model, "bc_loss", "actor_forward"), (idql_module, "soft_update", "target_update")]


def awr_phases(agent):
    return [(agent.replay, "ordered", "replay_sample"), (agent, "td_lambda", "td_lambda"),
            (agent.critic, "forward", "critic_forward"), (agent.model, "per_sample_bc_loss", "actor_forward")]


def dsrl_phases(agent):
    """The frozen policy's decoding (of s' in the TD targets, of fresh noise in the distillation) is its own phase."""
    return [(agent.replay, "sample", "replay_sample"), (agent.steering, "decode", "decode"),
            (agent.critic, "forward", "critic_forward"), (agent.critic_target, "forward", "critic_forward"),
            (agent.noise_critic, "forward", "critic_forward"), (agent.noise_actor, "forward", "actor_forward"),
            (dsrl_module, "soft_update", "target_update")]


ITERATION_PHASES = {"PPOAgent": ppo_phases, "DQLAgent": dql_phases, "IDQLAgent": idql_phases, "AWRAgent": awr_phases,
                    "DSRLAgent": dsrl_phases}


def bench_iteration(agent, device: str) -> dict:
    """One whole iteration in the agent's precision, with its phases."""
    return timed_iteration(agent, PhaseClock(device), device)


def first_full_update_itr(cfg) -> int:
    """The first iteration whose update trains the actor: after critic warm-up and (DSRL) the BC policy's steps."""
    return max(cfg.train.n_critic_warmup_itr, math.ceil(cfg.train.get("init_rollout_steps", 0) / cfg.train.n_steps))


def bench_algorithm(name: str, overrides: list[str], device: str) -> dict:
    """One iteration of algorithm `name` (dql, idql, awr, dsrl) at its paper settings, after critic warm-up."""
    with tempfile.TemporaryDirectory() as logdir:
        cfg = compose_cfg(overrides + [f"device={device}"], logdir, ALGORITHM_CONFIGS[name])
        agent = hydra.utils.get_class(cfg._target_)(cfg)
        try:
            agent.itr = first_full_update_itr(cfg)  # the actor trains too
            with first_gradient_step_recorded(agent) as recorder:
                result = bench_iteration(agent, device)
        finally:
            agent.venv.close()
    result["seconds_per_gradient_step"] = result["update_seconds"] / result["gradient_steps"]
    if recorder.counts:  # algorithms drawing their batches with replay_sample (DQL, IDQL, DSRL)
        step_seconds = matmul_seconds(recorder.counts, FULL["repeats"], device)
        result["update_roofline"] = {
            "products_per_gradient_step": sum(recorder.counts.values()),
            "seconds_per_gradient_step": step_seconds,
            "seconds": step_seconds * result["gradient_steps"],
            "seconds_per_env_step": step_seconds * result["gradient_steps"] / result["env_steps"]}
    result["config"] = {"name": ALGORITHM_CONFIGS[name], "overrides": overrides, "n_envs": cfg.env.n_envs,
                        "n_steps": cfg.train.n_steps, "batch_size": cfg.train.batch_size,
                        "replay_ratio": cfg.train.get("replay_ratio"), "denoising_steps": cfg.denoising_steps}
    return result


@contextlib.contextmanager
def first_gradient_step_recorded(agent):
    """Yields a recorder of the matmuls of the agent's first gradient step: it starts at the update's first
    `replay_sample` call and stops at the second, so one step of critic and actor updates lies in between. On
    exit the recorder stops (an update of one step) and the agent's own `replay_sample` is back. Every gradient
    step has the same products."""
    recorder = MatmulRecorder()
    sample = agent.replay_sample
    calls = 0

    def replay_sample(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            recorder.start()
        elif calls == 2:
            recorder.stop()
        return sample(*args, **kwargs)

    agent.replay_sample = replay_sample
    try:
        yield recorder
    finally:
        recorder.stop()
        del agent.replay_sample


def bench_dsrl_sac_step(overrides: list[str], device: str, repeats: int) -> dict:
    """One DSRL-SAC gradient step (in each precision) and one of Stable-Baselines3's SAC (float32) with the same
    networks and batch size, timed alternately (so that a machine's load weighs on all alike), on a replay batch of
    random Hopper-shaped rows."""
    sys.path.insert(0, os.path.join(REPO, "script", "reference"))
    from sb3_dsrl_sac import dsrl_sac

    with tempfile.TemporaryDirectory() as logdir:
        cfg = compose_cfg(overrides + [f"device={device}", "train.variant=sac"], logdir, ALGORITHM_CONFIGS["dsrl"])
        agent = hydra.utils.get_class(cfg._target_)(cfg)
        try:
            size, chunk = cfg.train.batch_size, (cfg.horizon_steps, cfg.action_dim)
            batch = random_dsrl_batch(cfg, device)
            sb3 = dsrl_sac(cfg.obs_dim * cfg.cond_steps, chunk[0] * chunk[1], list(cfg.critic.mlp_dims), size,
                           cfg.train.action_magnitude, device=device)
            for row in range(size):
                sb3.replay_buffer.add(batch["obs"]["state"][row].flatten().cpu().numpy()[None],
                                      batch["next_obs"]["state"][row].flatten().cpu().numpy()[None],
                                      batch["stored"]["noise"][row].flatten().cpu().numpy()[None],
                                      batch["rewards"][row:row + 1].cpu().numpy(), np.zeros(1), [{}])
            ours, theirs = {precision: [] for precision in PRECISIONS}, []
            for _ in range(repeats):  # alternately, each the median of 10 steps
                for precision in PRECISIONS:
                    with running_in(agent, precision):
                        ours[precision].append(median_seconds(lambda: agent.gradient_step(batch), 10, device))
                theirs.append(median_seconds(lambda: sb3.train(1, size), 10, device))
        finally:
            agent.venv.close()
    sb3_seconds = statistics.median(theirs)
    result = {"sb3_seconds": sb3_seconds, "batch_size": size, "mlp_dims": list(cfg.critic.mlp_dims)}
    for precision, times in ours.items():
        result[precision] = {"seconds": statistics.median(times), "speedup": sb3_seconds / statistics.median(times)}
    return result


def bench_dsrl_costs(task: str, overrides: list[str], device: str, repeats: int) -> dict:
    """DSRL's update cost on `task` at the task's DSRL settings (network width, train_freq, DDIM steps), without a
    whole iteration: the median time of one gradient step of each variant (DSRL-NA's with the decoding of s', and
    its noise-critic step with the decoding of fresh noise), their matmul rooflines, and the update time per env
    step the settings imply: (utd * step [+ noise_critic_grad_steps * noise-critic step]) / (train_freq * n_envs
    * act_steps). On a random replay batch of the task's shapes, in the run's precision (the decoding's)."""
    result = {"task": task}
    for variant in dsrl_module.VARIANTS:
        with tempfile.TemporaryDirectory() as logdir:
            cfg = compose_cfg([f"task={task}", *overrides, f"device={device}", f"train.variant={variant}"], logdir,
                              ALGORITHM_CONFIGS["dsrl"])
            agent = hydra.utils.get_class(cfg._target_)(cfg)
            try:
                batch = random_dsrl_batch(cfg, device)
                steps = {"gradient_step": agent.gradient_step}
                if variant == "na":
                    steps["noise_critic_step"] = agent.noise_critic_step
                timings = {}
                for name, step in steps.items():
                    with MatmulRecorder() as recorder:
                        step(batch)
                    timings[name] = {"seconds": median_seconds(lambda: step(batch), repeats, device),
                                     "roofline_seconds": matmul_seconds(recorder.counts, repeats, device)}
            finally:
                agent.venv.close()
        train = cfg.train
        per_round = {key: train.utd * timings["gradient_step"][key]
                     + train.noise_critic_grad_steps * timings.get("noise_critic_step", {}).get(key, 0.0)
                     for key in ("seconds", "roofline_seconds")}
        env_steps_per_round = train.train_freq * cfg.env.n_envs * cfg.act_steps
        result[variant] = {**timings, "update_seconds_per_env_step": per_round["seconds"] / env_steps_per_round,
                           "roofline_seconds_per_env_step": per_round["roofline_seconds"] / env_steps_per_round}
    result["config"] = {"mlp_dims": list(cfg.critic.mlp_dims), "batch_size": cfg.train.batch_size,
                        "utd": cfg.train.utd, "train_freq": cfg.train.train_freq, "n_envs": cfg.env.n_envs,
                        "act_steps": cfg.act_steps, "ddim_steps": cfg.ddim_steps,
                        "noise_critic_grad_steps": cfg.train.noise_critic_grad_steps, "precision": cfg.precision}
    return result


def random_dsrl_batch(cfg, device: str) -> dict:
    """A replayed batch of random rows shaped as cfg's task: obs / next_obs, chunks, their noise, rewards."""
    size, chunk = cfg.train.batch_size, (cfg.horizon_steps, cfg.action_dim)
    obs_shape = (size, cfg.cond_steps, cfg.obs_dim)
    return {"obs": {"state": torch.randn(obs_shape, device=device)},
            "next_obs": {"state": torch.randn(obs_shape, device=device)},
            "actions": torch.rand(size, *chunk, device=device) * 2 - 1,
            "stored": {"noise": torch.rand(size, *chunk, device=device) * 2 - 1},
            "rewards": torch.randn(size, device=device),
            "terminated": torch.zeros(size, dtype=torch.bool, device=device)}


def busy_loop() -> None:
    """A CPU-bound process standing for another job on the machine."""
    while True:
        pass


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def run_bench(overrides: list[str], tiny: bool, threads: int | None, device: str, busy: int,
              algorithms: list[str], dsrl_tasks: list[str] = (), dppo: bool = True) -> dict:
    mode = TINY if tiny else FULL
    if threads is not None:
        set_threads(threads)
    loaders = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(busy)]
    for process in loaders:
        process.start()
    try:
        results = bench_dppo(overrides, mode, tiny, device) if dppo else {}
        results["algorithms"] = {
            name: bench_algorithm(name, mode["algorithm_overrides"][name] if tiny else [], device)
            for name in algorithms}
        if "dsrl" in algorithms:
            results["dsrl_sac_step"] = bench_dsrl_sac_step(mode["algorithm_overrides"]["dsrl"] if tiny else [],
                                                           device, mode["repeats"])
        results["dsrl_costs"] = [
            bench_dsrl_costs(task, mode["algorithm_overrides"]["dsrl"] if tiny else [], device, mode["repeats"])
            for task in dsrl_tasks]
    finally:
        for process in loaders:
            process.terminate()
    if dppo:
        add_ratios_to_dppo(results)
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "allocator": loaded_allocator(),
        "busy_processes": busy,
        "device": device,
        "bf16_native": native_bf16(device),
        **results,
    }


def bench_dppo(overrides: list[str], mode: dict, tiny: bool, device: str) -> dict:
    """DPPO's own figures on the config: sampling, update, probes, env only, whole iterations."""
    with tempfile.TemporaryDirectory() as logdir:
        cfg = compose_cfg(mode["overrides"] + [f"device={device}"] + overrides, logdir)
        agent = ppo_module.PPOAgent(cfg)
        try:
            repeats = mode["repeats"]
            results = {"sampling_seconds": {
                precision: bench_sampling(agent.model, mode["sampling_envs"], repeats, device, precision,
                                          cfg.train.sampling_threads)
                for precision in PRECISIONS}}
            results["update"] = bench_update(agent, mode["update_repeats"], device)
            results["probes"] = bench_probes(agent, mode, device)
            results["env"] = bench_env(agent, cfg.train.n_steps, device)
            results["iteration"] = {}
            for precision in PRECISIONS:
                with running_in(agent, precision):
                    results["iteration"][precision] = bench_iteration(agent, device)
        finally:
            agent.venv.close()
    for precision, iteration in results["iteration"].items():
        sampling_only = cfg.train.n_steps * results["sampling_seconds"][precision][str(cfg.env.n_envs)]
        iteration["sampling_only_seconds"] = sampling_only
        iteration["rollout_vs_bound"] = iteration["rollout_seconds"] / max(results["env"]["seconds"], sampling_only)
    results["iteration"]["bf16_vs_fp32"] = (results["iteration"]["bf16"]["total_seconds"]
                                            / results["iteration"]["fp32"]["total_seconds"])
    results["precision"] = cfg.precision
    results["sampling_threads"] = cfg.train.sampling_threads
    results["config"] = {"name": CONFIG_NAME, "tiny": tiny, "overrides": overrides, "n_envs": cfg.env.n_envs,
                         "n_steps": cfg.train.n_steps, "batch_size": cfg.train.batch_size,
                         "update_epochs": cfg.train.update_epochs, "denoising_steps": cfg.denoising_steps,
                         "ft_denoising_steps": cfg.ft_denoising_steps,
                         "grad_chunk_size": cfg.train.get("grad_chunk_size"),
                         "overlap_rollout": cfg.env.get("overlap_rollout")}
    return results


def add_ratios_to_dppo(results: dict) -> None:
    """Each other algorithm's time per env step over DPPO's whole iteration in the same precision."""
    for result in results["algorithms"].values():
        dppo = results["iteration"][result["precision"]]
        result["per_env_step_vs_dppo"] = result["seconds_per_env_step"] / dppo["seconds_per_env_step"]
        if "update_roofline" in result:
            result["update_roofline"]["per_env_step_vs_dppo"] = (result["update_roofline"]["seconds_per_env_step"]
                                                                 / dppo["seconds_per_env_step"])
    for costs in results["dsrl_costs"]:
        dppo = results["iteration"][costs["config"]["precision"]]
        for variant in dsrl_module.VARIANTS:
            costs[variant]["update_per_env_step_vs_dppo"] = (costs[variant]["update_seconds_per_env_step"]
                                                             / dppo["seconds_per_env_step"])


def iteration_rows(label: str, iteration: dict) -> list[tuple[str, str]]:
    rows = [(label, f"{iteration['total_seconds']:.2f} s (rollout {iteration['rollout_seconds']:.2f} s, update "
                    f"{iteration['update_seconds']:.2f} s), {iteration['seconds_per_env_step'] * 1e3:.3f} ms per env step")]
    rows += [(f"  {phase}", f"{seconds:.2f} s ({iteration['calls'][phase]} calls)")
             for phase, seconds in iteration["phases"].items()]
    rows.append(("  unaccounted", f"{iteration['unaccounted_seconds']:.2f} s"))
    return rows


def table(report: dict) -> str:
    rows = [("threads / busy processes / OMP_WAIT_POLICY / GOMP_SPINCOUNT / allocator",
             f"{report['threads']} / {report['busy_processes']} / {report['omp_wait_policy']} / "
             f"{report['gomp_spincount']} / {report['allocator']}")]
    if "iteration" in report:
        rows += dppo_rows(report)
    rows += other_algorithm_rows(report)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def dppo_rows(report: dict) -> list[tuple[str, str]]:
    update, env = report["update"], report["env"]
    rows = [("precision of the config (bf16 native here)", f"{report['precision']} ({report['bf16_native']})"),
            ("sampling threads", f"{report['sampling_threads']}")]
    for precision, sampling in report["sampling_seconds"].items():
        rows += [(f"sampling {precision}, {n} envs", f"{seconds * 1e3:.1f} ms") for n, seconds in sampling.items()]
    rows.append(("log-probs", f"{update['log_probs_terms_per_s']:,.0f} terms/s"))
    for precision in PRECISIONS:
        figures = update[precision]
        rows += [
            (f"update {precision}, minibatch of {update['terms']:,} terms",
             f"{figures['update_seconds']:.3f} s, {figures['update_terms_per_s']:,.0f} terms/s"),
            (f"  {precision} matmul roofline of that update", f"{figures['roofline_seconds']:.3f} s "
                                                              f"({figures['update_vs_roofline']:.0%} reached)"),
        ]
    rows.append(("update bf16 / fp32", f"{update['bf16_vs_fp32']:.2f}"))
    probes = report["probes"]
    rows += [
        ("clamp_min allocating / into held memory", "{allocating:.1f} / {into_held_memory:.1f} ms".format(
            **probes["elementwise_ms"])),
        ("bf16 explore on 1 / the job's threads", " / ".join(f"{ms:.1f} ms" for ms in
                                                           probes["sampling_threads_ms"].values())),
        ("AdamW step fused / looped", "{fused:.2f} / {looped:.2f} ms".format(**probes["adamw_step_ms"])),
        ("bf16 log-probs: |diff| mean / max", "{abs_difference_mean:.1e} / {abs_difference_max:.1e}".format(
            **probes["bf16_log_probs"])),
        ("  change after one step: corr, error / change", "{change_correlation:.3f}, {change_error_mean:.1e} / "
                                                          "{change_mean_abs:.1e}".format(**probes["bf16_log_probs"])),
    ]
    rows.append((f"env only, {env['chunk_steps']} chunk-steps",
                 f"{env['seconds']:.2f} s, {env['env_steps_per_s']:,.0f} env steps/s"))
    for precision in PRECISIONS:
        iteration = report["iteration"][precision]
        rows += iteration_rows(f"iteration {precision}", iteration)
        rows.append(("  rollout / max(env only, sampling only)", f"{iteration['rollout_vs_bound']:.2f}"))
    rows.append(("iteration bf16 / fp32", f"{report['iteration']['bf16_vs_fp32']:.2f}"))
    return rows


def other_algorithm_rows(report: dict) -> list[tuple[str, str]]:
    """The --algorithms and --dsrl-tasks figures, with their ratios to DPPO where DPPO was benched."""
    rows = []
    for name, result in report["algorithms"].items():
        rows += iteration_rows(f"{name} iteration ({result['precision']}, {result['gradient_steps']} gradient steps)",
                               result)
        if "per_env_step_vs_dppo" in result:
            rows.append((f"  {name} / DPPO, time per env step", f"{result['per_env_step_vs_dppo']:.2f}"))
        if "update_roofline" in result:
            roofline = result["update_roofline"]
            versus_dppo = (f", {roofline['per_env_step_vs_dppo']:.2f}x DPPO's whole iteration per env step"
                           if "per_env_step_vs_dppo" in roofline else "")
            rows.append((f"  {name} update's matmul roofline alone", f"{roofline['seconds']:.2f} s "
                         f"({roofline['seconds_per_gradient_step'] * 1e3:.1f} ms per gradient step){versus_dppo}"))
        rows.append((f"  {name} time per gradient step", f"{result['seconds_per_gradient_step'] * 1e3:.2f} ms"))
    if "dsrl_sac_step" in report:
        step = report["dsrl_sac_step"]
        for precision in PRECISIONS:
            rows.append((f"DSRL-SAC step {precision} / SB3 SAC step fp32 (batch {step['batch_size']}, {step['mlp_dims']})",
                         f"{step[precision]['seconds'] * 1e3:.2f} / {step['sb3_seconds'] * 1e3:.2f} ms, "
                         f"{step[precision]['speedup']:.2f}x faster"))
    for costs in report.get("dsrl_costs", []):
        config = costs["config"]
        for variant in dsrl_module.VARIANTS:
            figures = costs[variant]
            steps = ", ".join(f"{name} {step['seconds'] * 1e3:.1f} ms (roofline {step['roofline_seconds'] * 1e3:.1f})"
                              for name, step in figures.items() if isinstance(step, dict))
            rows.append((f"DSRL-{variant.upper()} on {costs['task']} ({config['mlp_dims']}, {config['precision']})",
                         steps))
            versus_dppo = (f", {figures['update_per_env_step_vs_dppo']:.1f}x DPPO's whole iteration"
                           if "update_per_env_step_vs_dppo" in figures else "")
            rows.append(("  update per env step, its roofline",
                         f"{figures['update_seconds_per_env_step'] * 1e3:.2f} ms, "
                         f"{figures['roofline_seconds_per_env_step'] * 1e3:.2f} ms{versus_dppo}"))
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 2 envs, 3 chunk-steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run beside the bench")
    parser.add_argument("--algorithms", default="", help=f"also bench one iteration of these: "
                                                          f"{','.join(ALGORITHM_CONFIGS)}")
    parser.add_argument("--dsrl-tasks", default="", help="also DSRL's update cost per gradient step and per env "
                                                          "step at these tasks' DSRL settings, e.g. hopper,can")
    parser.add_argument("--no-dppo", action="store_true", help="leave out DPPO's own figures (minutes at full "
                                                                   "size): only --algorithms and --dsrl-tasks, "
                                                                   "without their ratios to DPPO")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("overrides", nargs="*", help=f"Hydra overrides of {CONFIG_NAME}")
    args = parser.parse_args(argv)
    algorithms = [name for name in args.algorithms.split(",") if name]
    unknown = set(algorithms) - set(ALGORITHM_CONFIGS)
    if unknown:
        parser.error(f"--algorithms: unknown {sorted(unknown)}; use some of {','.join(ALGORITHM_CONFIGS)}.")
    report = run_bench(args.overrides, args.tiny, args.threads, args.device, args.busy, algorithms,
                       [task for task in args.dsrl_tasks.split(",") if task], dppo=not args.no_dppo)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
