"""Benchmark of DPPO fine-tuning's hot paths, measured in one run on one machine.

    python script/bench.py                            # the paper's Gym config: Hopper, 40 envs x 500 chunk-steps
    python script/bench.py --threads 2 --busy 1       # the same with one other CPU-bound process running
    python script/bench.py --json bench.json train.grad_chunk_size=500   # trailing args: Hydra overrides
    python script/bench.py --tiny                     # tiny networks and envs: a few seconds (the tests run it)

Figures (docs/PERFORMANCE.md reads them):
- sampling: median latency of `model.explore` (all K denoising steps, the K' fine-tuned ones kept) for 10, 40
  and 160 envs' observations.
- log_probs: (sample, denoising step) terms per second of `model.log_probs` over one minibatch, no graph.
- update: terms per second of `PPOAgent.minibatch_update` (forward, backward, optimizer step) on one minibatch
  of the config's size, and the roofline: the terms per second of plain `torch.mm` calls with the shapes of
  every Linear layer's forward and backward in that update (actor on B x K' rows, critic on B rows), timed in
  the same run. Their ratio is the fraction of the machine's matmul speed the update reaches.
- env: env steps per second of the configured vector env stepping random action chunks and nothing else.
- iteration: one whole fine-tuning iteration (`collect_rollout` then `update`) with its phases: env_wait (the
  main process in `step_async` / `step_wait`: env stepping that sampling did not hide) and sampling inside the
  rollout, old log-probabilities (when recomputed), loss forward, and the rest of the update (backward,
  optimizer, GAE). `rollout_vs_bound` is the rollout time over max(env-only time, sampling-only time) for the
  same steps, both measured above.

The machine, torch version, threads and config are written with the figures (JSON with --json, a table on
stdout). CUDA timings synchronize the device around every timed call.
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # script/run.py's default, so the bench measures it

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from torch import nn  # noqa: E402

from agent.finetune.ppo import PPOAgent  # noqa: E402
from dppo.config import register_resolvers, validate_config  # noqa: E402
from dppo.runtime import available_cores, set_threads  # noqa: E402

CONFIG_NAME = "ft_ppo_diffusion_mlp"
FULL = {"sampling_envs": (10, 40, 160), "repeats": 20, "update_repeats": 5, "overrides": []}
TINY = {
    "sampling_envs": (2, 4),
    "repeats": 2,
    "update_repeats": 2,
    "overrides": ["model.network.mlp_dims=[32,32,32]", "critic.mlp_dims=[32,32,32]", "base_policy_path=null",
                  "env.n_envs=2", "env.asynchronous=false", "train.n_steps=3", "train.batch_size=4",
                  "train.update_epochs=1", "denoising_steps=6", "ft_denoising_steps=3"],
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
    """Wall time spent in chosen methods of chosen objects, by phase name.

    `wrap(obj, "step", "env_step")` replaces obj.step (on this instance only) by a timed call. A wrapped method
    called from inside another wrapped one is counted in the outer phase only.
    """

    def __init__(self, device: str):
        self.device = device
        self.seconds = defaultdict(float)
        self.active = None

    def wrap(self, obj, method: str, phase: str) -> None:
        original = getattr(obj, method)

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
                self.active = None

        setattr(obj, method, timed)


def compose_cfg(overrides: list[str], logdir: str):
    register_resolvers()
    with initialize_config_dir(config_dir=os.path.join(REPO, "cfg"), version_base=None):
        cfg = compose(config_name=CONFIG_NAME, overrides=overrides + [
            f"logdir={logdir}", "wandb=null", "train.val_freq=null", "train.n_train_itr=1"])
    validate_config(cfg)
    return cfg


def random_obs(model, n: int, device: str) -> dict:
    return {"state": torch.randn(n, model.cond_steps, model.obs_dim, device=device)}


def bench_sampling(model, sizes, repeats: int, device: str) -> dict:
    """Median seconds of one `explore` call per batch size."""
    result = {}
    for n in sizes:
        obs = random_obs(model, n, device)
        with torch.no_grad():
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


def linear_shapes(module: nn.Module, rows: int) -> list[tuple[int, int, int]]:
    """(rows, in_features, out_features) of every Linear layer of `module`."""
    return [(rows, layer.in_features, layer.out_features) for layer in module.modules() if isinstance(layer, nn.Linear)]


def matmul_seconds(shapes, repeats: int, device: str) -> float:
    """Median time of the forward and backward matmuls of Linear layers with these shapes: for (M, I, O),
    (M x I)(I x O) forward, (M x O)(O x I) for the input gradient and (O x M)(M x I) for the weight gradient."""
    operands = []
    for rows, n_in, n_out in shapes:
        x, w, g = (torch.randn(*shape, device=device) for shape in ((rows, n_in), (n_in, n_out), (rows, n_out)))
        operands += [(x, w), (g, w.t()), (g.t(), x)]

    def run():
        for a, b in operands:
            torch.mm(a, b)

    return median_seconds(run, repeats, device)


def bench_update(agent: PPOAgent, repeats: int, device: str) -> dict:
    model, batch = agent.model, agent.cfg.train.batch_size
    data = minibatch(model, batch, device)
    terms = batch * model.ft_denoising_steps
    with torch.no_grad():
        log_prob_seconds = median_seconds(lambda: model.log_probs(data[0], data[1]), repeats, device)
    update_seconds = median_seconds(lambda: agent.minibatch_update(*data), repeats, device)
    shapes = linear_shapes(model.actor_ft, terms) + linear_shapes(agent.critic, batch)
    roofline_seconds = matmul_seconds(shapes, repeats, device)
    return {
        "minibatch_samples": batch,
        "terms": terms,
        "log_probs_terms_per_s": terms / log_prob_seconds,
        "update_seconds": update_seconds,
        "update_terms_per_s": terms / update_seconds,
        "roofline_seconds": roofline_seconds,
        "roofline_terms_per_s": terms / roofline_seconds,
        "update_vs_roofline": roofline_seconds / update_seconds,
    }


def bench_env(agent: PPOAgent, n_steps: int, device: str) -> dict:
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


def bench_iteration(agent: PPOAgent, device: str) -> dict:
    clock = PhaseClock(device)
    for method in ("step_async", "step_wait"):
        clock.wrap(agent.venv, method, "env_wait")
    clock.wrap(agent.model, "explore", "sampling")
    clock.wrap(agent.model, "log_probs", "old_log_probs")  # inside the loss it counts as loss_forward
    clock.wrap(agent.model, "log_probs_and_entropy", "loss_forward")  # the policy's forward inside the PPO loss
    obs = agent.reset_envs()
    synchronize(device)
    start = time.perf_counter()
    rollout, _, rollout_metrics = agent.collect_rollout(obs)
    synchronize(device)
    rollout_seconds = time.perf_counter() - start
    agent.update(rollout)
    synchronize(device)
    update_seconds = time.perf_counter() - start - rollout_seconds
    phases = {phase: clock.seconds[phase] for phase in ("env_wait", "sampling", "old_log_probs", "loss_forward")}
    phases["rollout_other"] = rollout_seconds - phases["env_wait"] - phases["sampling"]
    phases["update_backward_and_rest"] = update_seconds - phases["old_log_probs"] - phases["loss_forward"]
    return {
        "env_steps": rollout_metrics["iteration_env_steps"],
        "rollout_seconds": rollout_seconds,
        "update_seconds": update_seconds,
        "total_seconds": rollout_seconds + update_seconds,
        "phases": phases,
    }


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


def run_bench(overrides: list[str], tiny: bool, threads: int | None, device: str, busy: int) -> dict:
    mode = TINY if tiny else FULL
    if threads is not None:
        set_threads(threads)
    loaders = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(busy)]
    for process in loaders:
        process.start()
    try:
        with tempfile.TemporaryDirectory() as logdir:
            cfg = compose_cfg(mode["overrides"] + [f"device={device}"] + overrides, logdir)
            agent = PPOAgent(cfg)
            try:
                repeats = mode["repeats"]
                results = {"sampling_seconds": bench_sampling(agent.model, mode["sampling_envs"], repeats, device)}
                results["update"] = bench_update(agent, mode["update_repeats"], device)
                results["env"] = bench_env(agent, cfg.train.n_steps, device)
                results["iteration"] = bench_iteration(agent, device)
                n_envs = cfg.env.n_envs
                per_step = bench_sampling(agent.model, (n_envs,), repeats, device)[str(n_envs)]
            finally:
                agent.venv.close()
    finally:
        for process in loaders:
            process.terminate()
    iteration = results["iteration"]
    sampling_only = cfg.train.n_steps * per_step
    iteration["sampling_only_seconds"] = sampling_only
    iteration["rollout_vs_bound"] = iteration["rollout_seconds"] / max(results["env"]["seconds"], sampling_only)
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "busy_processes": busy,
        "device": device,
        "config": {"name": CONFIG_NAME, "tiny": tiny, "overrides": overrides, "n_envs": n_envs,
                   "n_steps": cfg.train.n_steps, "batch_size": cfg.train.batch_size,
                   "update_epochs": cfg.train.update_epochs, "denoising_steps": cfg.denoising_steps,
                   "ft_denoising_steps": cfg.ft_denoising_steps,
                   "grad_chunk_size": cfg.train.get("grad_chunk_size"),
                   "overlap_rollout": cfg.env.get("overlap_rollout")},
        **results,
    }


def table(report: dict) -> str:
    update, env, iteration = report["update"], report["env"], report["iteration"]
    rows = [("threads / busy processes / OMP_WAIT_POLICY",
             f"{report['threads']} / {report['busy_processes']} / {report['omp_wait_policy']}")]
    rows += [(f"sampling, {n} envs", f"{seconds * 1e3:.1f} ms") for n, seconds in report["sampling_seconds"].items()]
    rows += [
        ("log-probs", f"{update['log_probs_terms_per_s']:,.0f} terms/s"),
        (f"update, minibatch of {update['terms']:,} terms", f"{update['update_seconds']:.3f} s, "
                                                           f"{update['update_terms_per_s']:,.0f} terms/s"),
        ("matmul roofline of that update", f"{update['roofline_seconds']:.3f} s, "
                                           f"{update['roofline_terms_per_s']:,.0f} terms/s"),
        ("update / roofline", f"{update['update_vs_roofline']:.0%}"),
        (f"env only, {env['chunk_steps']} chunk-steps", f"{env['seconds']:.2f} s, {env['env_steps_per_s']:,.0f} env steps/s"),
        ("iteration", f"{iteration['total_seconds']:.2f} s (rollout {iteration['rollout_seconds']:.2f} s, "
                      f"update {iteration['update_seconds']:.2f} s)"),
    ]
    rows += [(f"  {phase}", f"{seconds:.2f} s") for phase, seconds in iteration["phases"].items()]
    rows += [("rollout / max(env only, sampling only)", f"{iteration['rollout_vs_bound']:.2f}")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 2 envs, 3 chunk-steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run beside the bench")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("overrides", nargs="*", help=f"Hydra overrides of {CONFIG_NAME}")
    args = parser.parse_args(argv)
    report = run_bench(args.overrides, args.tiny, args.threads, args.device, args.busy)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
