"""Run the original DPPO code's fine-tuning agent (irom-lab/dppo @ 7b10df6) on this project's task and checkpoint.

    git --git-dir=/work/.mirror/irom-lab+dppo/repo archive 7b10df6 | tar -x -C /tmp/dppo-orig
    DPPO_ORIGINAL=/tmp/dppo-orig python script/reference/run_original.py --algorithm ppo --task hopper --seed 0 \
        --n-envs 10 --n-steps 250 --n-train-itr 20 --val-freq 5 --out /work/runs/orig_compare/original/ppo/seed0

Algorithms: the diffusion policy's ppo, rwr, awr, dql, idql, and gaussian (Gaussian PPO: the original's
TrainPPOGaussianAgent with PPO_Gaussian, a Gaussian_MLP actor and a CriticObs critic).

The original's agent and model code run unchanged, imported from the checkout (`--original` or DPPO_ORIGINAL) with
this project's root removed from sys.path. Replaced around them:
- `env.gym_utils` by script/reference/original_env.py: this project's gymnasium task (Hopper-v5, ...) with the
  original's normalization, chunking, time-limit and reset contract;
- `wandb` by a recorder: what the agent logs (returns, losses, approx_kl, ...) goes to <out>/metrics.csv, one row per
  iteration with its wall time (`wall_time`, seconds), nothing to wandb;
- for gaussian, the name ResidualMLP in model/common/mlp_gaussian.py, which the original cannot call as its
  Gaussian_MLP does (it passes dropout=, which its ResidualMLP does not take), by a subclass that takes dropout=0;
- the checkpoint by this project's data/gym/<task>-medium-v5/pretrained/diffusion_mlp.pt (gaussian: gaussian_mlp.pt)
  under the original's parameter names (original_weights.py; names and shapes must match exactly), written to
  <out>/original_checkpoint.pt; the agent's loaded actor is checked against it, and <out>/probe_samples.pt holds its
  deterministic and exploring samples on fixed observations and noise, which script/reference/compare_original.py
  checks against this project's policy.

Its config, cfg/gym/finetune/<task>-v2/ft_<algorithm>_diffusion_mlp.yaml, is used as it is but for the env (the
gymnasium id and this project's normalization.npz), paths, device (cpu), seed and budget. The original has no Gym
fine-tuning config for Gaussian PPO: for gaussian it is script/reference/original_ft_ppo_gaussian_mlp.yaml, this
project's ft_ppo_gaussian_mlp settings written for the original's agent, with the task's sizes (obs_dim, action_dim,
max_episode_steps) from this project's cfg/task/<task>.yaml and the same changes. The original evaluates *instead of*
training in every val_freq-th iteration, so --n-train-itr training iterations with an evaluation before the first and
after every --val-freq of them take n_train_itr + n_train_itr // val_freq + 1 of its iterations at its
val_freq = --val-freq + 1. The run restarts from scratch when started again (the original has no resume).

Gaussian PPO, the original's agent beside this project's (both run with the settings above):
- its evaluation is not the mean: a deterministic forward draws mean + 1e-4 * N(0, 1), clipped at randn_clip_value
  * 1e-4 (model/common/gaussian.py:81-82, 103-107); this project evaluates the mean. probe_samples.pt therefore holds
  the mean of that distribution (its `loc`) as the deterministic chunk;
- both learn the std as one log-variance per action dim (Da,), shared by the chunk's Ta steps
  (model/common/mlp_gaussian.py:233-240, 267-271; this project's GaussianMLP.logvar, which until 2026-12-06 was a
  log-std per chunk step, (Ta, Da), and so moved twice as far per Adam step);
- both clamp the std to [std_min, std_max] (on the log-variance), the sample to the mean +- randn_clip_value stds
  (the original after sampling, this project the noise before: the same values), and the log-probability (mean over
  the chunk's Ta x Da elements) to [-5, 2] (model/rl/gaussian_ppo.py:62-63, this project's logprob_min,
  logprob_max); neither clips the final action nor applies tanh after sampling.
"""

import argparse
import csv
import importlib
import logging
import os
import sys
import time
import types

import torch

REFERENCE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(REFERENCE_DIR))
ALGORITHMS = ("ppo", "rwr", "awr", "dql", "idql", "gaussian")  # gaussian: Gaussian PPO, the others on diffusion
GAUSSIAN_CONFIG = os.path.join(REFERENCE_DIR, "original_ft_ppo_gaussian_mlp.yaml")
TASKS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}  # task -> gymnasium id
CHECKOUT_FILE = "agent/finetune/train_ppo_diffusion_agent.py"  # present in any checkout of the original


class MetricsRecorder(types.ModuleType):
    """Stands in for the `wandb` module: keeps each iteration's logged values (`log(data, step=itr)`) and rewrites
    `path` (CSV, one row per iteration, `itr` and `wall_time` first) after every call.

    Each row also gets returns counted as this project counts them, from the episodes the vector env saw end during
    the iteration (original_env.SequentialVectorEnv.pop_episodes): `episode_return_ended` over every episode that
    ended, whole (this project's training return), and `episode_return_first` over each env's first episode since
    the agent reset it (this project's evaluation return: one episode per env), with their counts `n_episodes_*`.
    """

    def __init__(self, path: str):
        super().__init__("wandb")
        self.path = path
        self.rows: dict[int, dict] = {}
        self.clock = time.perf_counter()
        self.venv = None

    def init(self, **kwargs) -> None:
        """The agent's wandb.init(entity, project, name, config): nothing to set up."""

    def start(self, venv) -> None:
        """The run begins: iterations are timed from now, episodes read from `venv`."""
        self.clock, self.venv = time.perf_counter(), venv

    def log(self, data: dict, step: int, commit: bool = True) -> None:
        row = self.rows.setdefault(step, {"itr": step})
        if "wall_time" not in row:  # the iteration's one log call comes at its end
            now = time.perf_counter()
            row["wall_time"], self.clock = now - self.clock, now
            row.update(episode_returns(self.venv.pop_episodes()))
        row.update({key: float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                    for key, value in data.items()})
        self.write()

    def write(self) -> None:
        columns = ["itr", "wall_time"] + sorted({key for row in self.rows.values() for key in row} - {"itr", "wall_time"})
        with open(self.path + ".tmp", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows[step] for step in sorted(self.rows))
        os.replace(self.path + ".tmp", self.path)


def episode_returns(episodes: list[tuple[float, bool]]) -> dict:
    """(return, first since reset) of the episodes that ended -> their counts and mean returns (none when 0)."""
    columns = {}
    for name, returns in (("ended", [r for r, _ in episodes]), ("first", [r for r, first in episodes if first])):
        columns[f"n_episodes_{name}"] = len(returns)
        if returns:
            columns[f"episode_return_{name}"] = sum(returns) / len(returns)
    return columns


def import_original(checkout: str, recorder: types.ModuleType) -> None:
    """Make `agent`, `model` and `util` the checkout's packages, `env.gym_utils` original_env.py and `wandb` the
    recorder. This project's env families are imported first, while the project root is still on sys.path."""
    if not os.path.isfile(os.path.join(checkout, CHECKOUT_FILE)):
        raise SystemExit(f"{checkout} is not a checkout of irom-lab/dppo (no {CHECKOUT_FILE}): pass --original or set "
                         "DPPO_ORIGINAL to a directory made by `git archive 7b10df6 | tar -x -C DIR`.")
    for package in ("agent", "model", "util"):
        if package in sys.modules:
            raise RuntimeError(f"'{package}' was imported before the original's: run this script in a fresh process.")
    sys.path.insert(0, REPO)
    import original_env

    import env.families  # noqa: F401  (this project's; the original's `env` package is never imported)

    sys.path[:] = [path for path in sys.path if os.path.abspath(path or ".") != REPO]
    sys.path.insert(0, os.path.abspath(checkout))
    sys.modules["env.gym_utils"] = original_env
    sys.modules["wandb"] = recorder
    for module in ("agent.finetune.train_agent", "model.diffusion.diffusion"):
        loaded = importlib.import_module(module).__file__
        if not os.path.abspath(loaded).startswith(os.path.abspath(checkout)):
            raise RuntimeError(f"{module} came from {loaded}, not from the checkout {checkout}.")


def let_gaussian_mlp_build_a_residual_mean() -> None:
    """The original's Gaussian_MLP with a fixed std passes `dropout` to the class of its mean network, which its
    ResidualMLP does not take (model/common/mlp_gaussian.py:225-232, model/common/mlp.py:92-99): with
    residual_style=True it cannot be built. Bind the name ResidualMLP in its module to a subclass that takes
    dropout=0 (Gaussian_MLP's default, which no config changes) and refuses any other value."""
    import model.common.mlp_gaussian as mlp_gaussian

    from model.common.mlp import ResidualMLP

    class ResidualMLPTakingNoDropout(ResidualMLP):
        def __init__(self, *args, dropout: float = 0, **kwargs):
            if dropout != 0:
                raise ValueError(f"dropout={dropout}: the original's ResidualMLP has no dropout; set model.actor.dropout=0.")
            super().__init__(*args, **kwargs)

    mlp_gaussian.ResidualMLP = ResidualMLPTakingNoDropout


def original_config_path(original: str, algorithm: str, task: str) -> str:
    """The config file of the original's run: its own Gym fine-tuning config, for gaussian (it has none) ours."""
    if algorithm == "gaussian":
        return GAUSSIAN_CONFIG
    return os.path.join(original, "cfg", "gym", "finetune", f"{task}-v2", f"ft_{algorithm}_diffusion_mlp.yaml")


def project_task_sizes(task: str) -> dict:
    """The sizes the original's own configs write in, from this project's cfg/task/<task>.yaml, in the original's
    keys: env_name, obs_dim, action_dim and env.max_episode_steps."""
    from omegaconf import OmegaConf

    task_cfg = OmegaConf.load(os.path.join(REPO, "cfg", "task", f"{task}.yaml"))
    return {"env_name": task, "obs_dim": task_cfg.obs_dim, "action_dim": task_cfg.action_dim,
            "env": {"max_episode_steps": task_cfg.max_episode_steps}}


def original_config(args: argparse.Namespace, checkpoint: str):
    """The original's config for the task and algorithm, with only env, paths, device, seed and budget changed (and,
    for gaussian, the task's sizes set)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("eval", eval, replace=True)  # as the original's script/run.py does
    cfg = OmegaConf.load(original_config_path(args.original, args.algorithm, args.task))
    if args.algorithm == "gaussian":
        cfg = OmegaConf.merge(cfg, project_task_sizes(args.task))
    dataset_dir = os.path.join(REPO, "data", "gym", f"{args.task}-medium-v5")
    overrides = {
        "seed": args.seed, "device": "cpu", "logdir": args.out, "base_policy_path": checkpoint,
        "normalization_path": os.path.join(dataset_dir, "normalization.npz"),
        "env": {"name": TASKS[args.task], "n_envs": args.n_envs},
        "wandb": {"entity": None, "project": "recorded", "run": os.path.basename(args.out)},
        "train": {"n_steps": args.n_steps, "n_train_itr": args.n_train_itr + args.n_train_itr // args.val_freq + 1,
                  "val_freq": args.val_freq + 1},
    }
    cfg = OmegaConf.merge(cfg, overrides)
    OmegaConf.resolve(cfg)
    return cfg


def write_original_checkpoint(cfg, algorithm: str, project_checkpoint: str, path: str) -> dict:
    """The project's policy network under the original's names, checked against the original actor the config
    builds, saved where the original's model loads it from: checkpoint["model"] (GaussianModel), else ["ema"]."""
    import hydra
    from original_weights import original_actor_state, original_gaussian_state, project_network_state

    actor = hydra.utils.instantiate(cfg.model.actor if "actor" in cfg.model else cfg.model.network)  # DRWR: network
    expected = {f"network.{name}": value.shape for name, value in actor.state_dict().items()}
    project_state = project_network_state(project_checkpoint)
    if algorithm == "gaussian":
        state = original_gaussian_state(project_state, expected)
        torch.save({"model": state}, path)
    else:
        state = original_actor_state(project_state, expected)
        torch.save({"ema": state}, path)
    return state


def check_loaded_actor(model, state: dict) -> None:
    """The original loads with strict=False: every mapped tensor must be in its policy network (`network`) and, for
    PPO, in the fine-tuned copy (`actor_ft`)."""
    loaded = model.state_dict()
    prefixes = ["network."] + (["actor_ft."] if hasattr(model, "actor_ft") else [])
    for prefix in prefixes:
        for name, value in state.items():
            if not torch.equal(loaded[prefix + name.removeprefix("network.")], value):
                raise RuntimeError(f"The original's model did not load {name} into {prefix}* from the mapped checkpoint.")


def action_chunks(model, cond: dict, deterministic: bool) -> torch.Tensor:
    """The original model's action chunks (B, Ta, Da) from its policy alone: a diffusion model's denoising chain, a
    Gaussian model's sample or, deterministic, its mean (its deterministic forward draws mean + 1e-4-scale noise)."""
    from model.diffusion.diffusion_idql import IDQLDiffusion
    from model.diffusion.diffusion_rwr import RWRDiffusion

    from model.common.gaussian import GaussianModel

    if isinstance(model, GaussianModel) and deterministic:
        mean = model.forward_train(cond, deterministic=True).loc  # (B, Ta * Da)
        return mean.view(len(mean), model.horizon_steps, -1)
    if isinstance(model, IDQLDiffusion):  # its forward picks among candidates by Q; they come from RWRDiffusion's
        return RWRDiffusion.forward(model, cond, deterministic=deterministic)
    chunks = model(cond=cond, deterministic=deterministic)
    return chunks.trajectories if hasattr(chunks, "trajectories") else chunks  # PPO's model returns a Sample


def probe_samples(model, obs_dim: int, cond_steps: int) -> dict:
    """The model's deterministic and exploring action chunks (PROBE_BATCH, Ta, Da) on the probe observations, each
    drawn after torch.manual_seed(PROBE_SEED); the caller's torch random state is left as it was."""
    from original_weights import PROBE_SEED, probe_inputs

    cond = probe_inputs(obs_dim, cond_steps)
    samples = {"state": cond["state"]}
    with torch.random.fork_rng(), torch.no_grad():
        for name, deterministic in (("deterministic", True), ("exploring", False)):
            torch.manual_seed(PROBE_SEED)
            samples[name] = action_chunks(model, cond, deterministic)
    return samples


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", default=os.environ.get("DPPO_ORIGINAL"),
                        help="checkout of irom-lab/dppo at 7b10df6 (default: $DPPO_ORIGINAL)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="ppo")
    parser.add_argument("--task", choices=sorted(TASKS), default="hopper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--n-steps", type=int, default=250, help="chunk-steps per env and iteration")
    parser.add_argument("--n-train-itr", type=int, default=20, help="training iterations")
    parser.add_argument("--val-freq", type=int, default=5, help="training iterations between evaluations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", required=True, help="run directory (metrics.csv, probe_samples.pt, checkpoints)")
    parser.add_argument("--probe-only", action="store_true",
                        help="write the checkpoint and probe_samples.pt, build no env and train nothing")
    args = parser.parse_args(argv)
    if args.original is None:
        parser.error("no checkout of the original: pass --original DIR or set DPPO_ORIGINAL.")
    if args.n_train_itr % args.val_freq != 0:
        parser.error(f"--n-train-itr {args.n_train_itr} must be a multiple of --val-freq {args.val_freq}, so that the "
                     "last training iteration is evaluated.")
    args.original, args.out = os.path.abspath(args.original), os.path.abspath(args.out)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.makedirs(args.out, exist_ok=True)
    recorder = MetricsRecorder(os.path.join(args.out, "metrics.csv"))
    import_original(args.original, recorder)
    if args.algorithm == "gaussian":
        let_gaussian_mlp_build_a_residual_mean()
    import hydra

    checkpoint = os.path.join(args.out, "original_checkpoint.pt")
    cfg = original_config(args, checkpoint)
    policy_file = "gaussian_mlp.pt" if args.algorithm == "gaussian" else "diffusion_mlp.pt"
    project_checkpoint = os.path.join(REPO, "data", "gym", f"{args.task}-medium-v5", "pretrained", policy_file)
    state = write_original_checkpoint(cfg, args.algorithm, project_checkpoint, checkpoint)
    if args.probe_only:
        model = hydra.utils.instantiate(cfg.model)
    else:
        agent = hydra.utils.get_class(cfg._target_)(cfg)
        model = agent.model
    check_loaded_actor(model, state)
    torch.save(probe_samples(model, cfg.obs_dim, cfg.cond_steps), os.path.join(args.out, "probe_samples.pt"))
    if args.probe_only:
        return
    recorder.start(agent.venv)
    agent.run()
    print(f"finished: {recorder.path}")


if __name__ == "__main__":
    main()
