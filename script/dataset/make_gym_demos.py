"""Make a "medium"-quality demonstration dataset for a Gym locomotion task.

D4RL cannot be downloaded here, so the project makes its own: train an expert
with stable-baselines3 PPO (MlpPolicy, VecNormalize), stop it once its recent
training return reaches the task's `demo.target_return` (cfg/task/<task>.yaml;
for the Gym tasks 40% of D4RL's expert reference return) or at
`--max-expert-steps`, then roll the policy out *with its own stochasticity* and
record states, actions, rewards and episode lengths. Any task whose config names
a gymnasium env id works (`env.family: gym`).

Writes `<out_dir>/train.npz` (states, actions, rewards, terminals,
traj_lengths) and `<out_dir>/metadata.json` (mean return of the recorded
episodes, seed, steps, library versions, the command).

    python script/dataset/make_gym_demos.py --task hopper
"""

import argparse
import json
import os
import sys
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from agent.dataset.writer import provenance, summarize, write_dataset
from dppo.config import ConfigError, load_task_config, task_names
from dppo.runtime import package_versions


class ExpertProgress:
    """SB3 callback factory: print progress every `report_every` env steps, and stop training when the mean
    return of the last `window` training episodes reaches `target_return` (never when it is None)."""

    def __init__(self, target_return: float | None, report_every: int = 20_000, window: int = 20):
        from stable_baselines3.common.callbacks import BaseCallback

        outer = self

        class _Callback(BaseCallback):
            def _on_step(self) -> bool:
                for info in self.locals["infos"]:
                    if "episode" in info:
                        outer.returns.append(info["episode"]["r"])
                if self.num_timesteps % outer.report_every == 0:
                    outer.report(self.num_timesteps)
                full = len(outer.returns) == outer.returns.maxlen
                return not (outer.target_return is not None and full and outer.recent() >= outer.target_return)

        self.target_return = target_return
        self.report_every = report_every
        self.returns = deque(maxlen=window)
        self.start = time.time()
        self.callback = _Callback()

    def recent(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def report(self, steps: int) -> None:
        target = "none" if self.target_return is None else f"{self.target_return:.1f}"
        print(f"expert: {steps} env steps, recent training return {self.recent():.1f} (target {target}), "
              f"{(time.time() - self.start) / 60:.1f} min", flush=True)


def train_expert(env_id: str, algo: str, hyperparameters: dict, target_return: float | None, max_steps: int,
                 seed: int, n_envs: int = 1):
    """Train an SB3 expert (PPO, SAC or TD3, MlpPolicy, observations normalized by VecNormalize) on a gymnasium
    env id until its recent training return reaches `target_return` or `max_steps` env steps have run."""
    import stable_baselines3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env(env_id, n_envs=n_envs, seed=seed), norm_reward=algo == "PPO")
    model = getattr(stable_baselines3, algo)("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **hyperparameters)
    progress = ExpertProgress(target_return)
    model.learn(total_timesteps=max_steps, callback=progress.callback)
    venv.training = False
    progress.report(model.num_timesteps)
    return model, venv, model.num_timesteps, progress.recent()


def roll_out(model, venv, env_id: str, n_transitions: int, seed: int) -> dict:
    """Roll out the stochastic policy until `n_transitions` steps of whole episodes are recorded."""
    env = gym.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    states, actions, rewards, terminals, lengths = [], [], [], [], []
    episode = 0
    while sum(lengths) < n_transitions:
        obs, _ = env.reset(seed=seed + episode)
        episode += 1
        done, length = False, 0
        while not done:
            policy_obs = venv.normalize_obs(obs[None].astype(np.float32))
            action, _ = model.predict(policy_obs, deterministic=False)
            action = np.clip(action[0], low, high)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            states.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminals.append(terminated)
            obs, done = next_obs, terminated or truncated
            length += 1
        lengths.append(length)
    return {
        "states": np.asarray(states, dtype=np.float32),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "terminals": np.asarray(terminals, dtype=bool),
        "traj_lengths": np.asarray(lengths, dtype=np.int64),
    }


# The libraries an expert's training runs on, as metadata.json records their versions.
EXPERT_PACKAGES = ("gymnasium", "mujoco", "stable_baselines3", "torch", "numpy")


def warn_if_made_with_other_versions(out_dir: str, versions: dict) -> None:
    """Warn loudly when `out_dir` already holds a dataset whose metadata.json records other library versions.

    An expert's training is chaotic: another numpy version alone sends it down another path (Walker2d, seed 0: numpy
    1.26.4 and 2.4.6 give other training returns from the first 20k steps on), so the remade dataset, its
    normalization and any policy pre-trained on it will not match the existing ones.
    """
    metadata_path = os.path.join(out_dir, "metadata.json")
    if not os.path.exists(metadata_path):
        return
    with open(metadata_path) as f:
        recorded = json.load(f).get("versions", {})
    differences = [f"{name} {recorded[name]} (here {version})" for name, version in versions.items()
                   if name in recorded and recorded[name] != version]
    if differences:
        print(f"*** WARNING: {metadata_path} was made with {', '.join(differences)}. An expert's training is chaotic: "
              "this run will not reproduce that dataset, its normalization or the policies pre-trained on it. Install "
              "those versions (e.g. in a venv with --system-site-packages) to remake it exactly. ***",
              file=sys.stderr, flush=True)


EXPERT_ALGOS = ("PPO", "SAC", "TD3")


def expert_reached(recent: float, target: float, min_frac: float) -> bool:
    """Whether a recent training return is within (1 - min_frac) |target| below the target: 0.8 x target for
    a positive target, -12 for a target of -10 at min_frac 0.8 (returns of any sign)."""
    return recent >= target - (1.0 - min_frac) * abs(target)


def parse_hyperparameters(text: str) -> dict:
    """--expert-hparams JSON -> keyword arguments of the SB3 algorithm."""
    try:
        hyperparameters = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: --expert-hparams is not JSON ({error}): pass e.g. '{{\"n_steps\": 512}}'.")
    if not isinstance(hyperparameters, dict):
        raise SystemExit("error: --expert-hparams must be a JSON object of SB3 keyword arguments.")
    policy_kwargs = hyperparameters.get("policy_kwargs", {})
    if isinstance(policy_kwargs.get("activation_fn"), str):  # JSON names the class: "ReLU" -> torch.nn.ReLU
        policy_kwargs["activation_fn"] = getattr(torch.nn, policy_kwargs["activation_fn"])
    return hyperparameters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help=f"a task of cfg/task with env.family gym ({', '.join(task_names('gym'))})")
    parser.add_argument("--algo", default="PPO", choices=EXPERT_ALGOS, help="the SB3 algorithm of the expert")
    parser.add_argument("--expert-hparams", default="{}", type=parse_hyperparameters,
                        help="JSON keyword arguments of the SB3 algorithm, e.g. RL-Zoo's tuned settings")
    parser.add_argument("--expert-envs", type=int, default=1, help="parallel envs the expert trains in")
    parser.add_argument("--max-expert-steps", type=int, default=600_000)
    parser.add_argument("--min-frac", type=float, default=0.8,
                        help="write nothing when the expert ends more than (1 - this) x |target| below the target return")
    parser.add_argument("--target-return", type=float, default=None,
                        help="the expert's target return (default: the task's demo.target_return)")
    parser.add_argument("--n-transitions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="default: the task's dataset_dir")
    args = parser.parse_args()

    try:
        task_cfg = load_task_config(args.task)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    if task_cfg.env.family != "gym":
        sys.exit(f"error: task {args.task} is a {task_cfg.env.family} task: this script makes demos of gym tasks "
                 "(robosuite: script/dataset/make_robosuite_demos.py).")
    env_id = task_cfg.env.id
    demo_cfg = task_cfg.get("demo") or {}
    target = args.target_return if args.target_return is not None else demo_cfg.get("target_return")
    torch.set_num_threads(1)
    out_dir = args.out_dir or task_cfg.dataset_dir
    versions = package_versions(EXPERT_PACKAGES)
    warn_if_made_with_other_versions(out_dir, versions)

    start = time.time()
    model, venv, steps, recent = train_expert(env_id, args.algo, args.expert_hparams, target, args.max_expert_steps,
                                              args.seed, args.expert_envs)
    train_minutes = (time.time() - start) / 60
    if target is not None and not expert_reached(recent, target, args.min_frac):
        sys.exit(f"\n*** EXPERT TOO WEAK: its recent training return {recent:.1f} is more than "
                 f"{1 - args.min_frac:.0%} of |target| below the target {target:.1f} after {steps} env steps; nothing "
                 "was written. Raise --max-expert-steps, tune --expert-hparams or choose another --algo. ***")
    expert_dir = os.path.join(out_dir, "expert")
    os.makedirs(expert_dir, exist_ok=True)
    model.save(os.path.join(expert_dir, f"{args.algo.lower()}_policy.zip"))
    venv.save(os.path.join(expert_dir, "vecnormalize.pkl"))

    data = roll_out(model, venv, env_id, args.n_transitions, seed=args.seed + 10_000)

    metadata = {
        "task": args.task,
        "env_id": env_id,
        **summarize(data),
        "reference_return": demo_cfg.get("reference_return"),
        "target_return": target,
        "expert": {
            "library": f"stable-baselines3 {args.algo} (MlpPolicy, VecNormalize)",
            "hyperparameters": json.loads(json.dumps(args.expert_hparams, default=lambda value: value.__name__)),
            "env_steps": int(steps),
            "recent_training_return": recent,
            "train_minutes": round(train_minutes, 1),
        },
        "rollout": "stochastic policy actions (deterministic=False), clipped to the action space",
        "seed": args.seed,
        "versions": versions,
        **provenance(__file__, sys.argv[1:]),
    }
    write_dataset(out_dir, data, metadata)


if __name__ == "__main__":
    main()
