"""Make a "medium"-quality demonstration dataset for a Gym locomotion task.

D4RL cannot be downloaded here, so the project makes its own: train an expert
with stable-baselines3 PPO (MlpPolicy, VecNormalize), stop it once its recent
training return reaches `--target-frac` of D4RL's expert reference return (or
at `--max-expert-steps`), then roll the policy out *with its own
stochasticity* and record states, actions, rewards and episode lengths.

Writes `<out_dir>/train.npz` (states, actions, rewards, terminals,
traj_lengths) and `<out_dir>/metadata.json` (mean return of the recorded
episodes, seed, steps, library versions, the command).

    python script/dataset/make_gym_demos.py --task hopper
"""

import argparse
import os
import sys
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch

from agent.dataset.writer import provenance, summarize, write_dataset
from dppo.paths import data_dir
from env.gym_locomotion import D4RL_REFERENCE_RETURNS, gym_env_id


class StopAtReturn:
    """SB3 callback factory: stop training when the mean of the last episodes reaches a return."""

    def __init__(self, target_return: float, window: int = 20):
        from stable_baselines3.common.callbacks import BaseCallback

        outer = self

        class _Callback(BaseCallback):
            def _on_step(self) -> bool:
                for info in self.locals["infos"]:
                    if "episode" in info:
                        outer.returns.append(info["episode"]["r"])
                full = len(outer.returns) == outer.returns.maxlen
                return not (full and np.mean(outer.returns) >= outer.target_return)

        self.target_return = target_return
        self.returns = deque(maxlen=window)
        self.callback = _Callback()


def train_expert(task: str, target_return: float, max_steps: int, seed: int):
    """Train SB3 PPO until the recent training return reaches `target_return`."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env(gym_env_id(task), n_envs=1, seed=seed))
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0)
    stopper = StopAtReturn(target_return)
    model.learn(total_timesteps=max_steps, callback=stopper.callback)
    venv.training = False
    recent = float(np.mean(stopper.returns)) if stopper.returns else float("nan")
    return model, venv, model.num_timesteps, recent


def roll_out(model, venv, task: str, n_transitions: int, seed: int) -> dict:
    """Roll out the stochastic policy until `n_transitions` steps of whole episodes are recorded."""
    env = gym.make(gym_env_id(task))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(D4RL_REFERENCE_RETURNS))
    parser.add_argument("--target-frac", type=float, default=0.4, help="stop the expert at this fraction of D4RL's expert return")
    parser.add_argument("--max-expert-steps", type=int, default=600_000)
    parser.add_argument("--n-transitions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="default: <data>/gym/<task>-medium-v5")
    args = parser.parse_args()

    torch.set_num_threads(1)
    out_dir = args.out_dir or os.path.join(data_dir(), "gym", f"{args.task}-medium-v5")
    os.makedirs(out_dir, exist_ok=True)
    expert_return = D4RL_REFERENCE_RETURNS[args.task][1]
    target = args.target_frac * expert_return

    start = time.time()
    model, venv, steps, recent = train_expert(args.task, target, args.max_expert_steps, args.seed)
    train_minutes = (time.time() - start) / 60
    print(f"expert: {steps} env steps, recent training return {recent:.1f} (target {target:.1f}), {train_minutes:.1f} min")
    expert_dir = os.path.join(out_dir, "expert")
    os.makedirs(expert_dir, exist_ok=True)
    model.save(os.path.join(expert_dir, "ppo_policy.zip"))
    venv.save(os.path.join(expert_dir, "vecnormalize.pkl"))

    data = roll_out(model, venv, args.task, args.n_transitions, seed=args.seed + 10_000)

    import mujoco
    import stable_baselines3

    metadata = {
        "task": args.task,
        "env_id": gym_env_id(args.task),
        **summarize(data),
        "d4rl_expert_return": expert_return,
        "target_return": target,
        "expert": {
            "library": "stable-baselines3 PPO (MlpPolicy, VecNormalize, default hyperparameters)",
            "env_steps": int(steps),
            "recent_training_return": recent,
            "train_minutes": round(train_minutes, 1),
        },
        "rollout": "stochastic policy actions (deterministic=False), clipped to the action space",
        "seed": args.seed,
        "versions": {
            "python": sys.version.split()[0],
            "gymnasium": gym.__version__,
            "mujoco": mujoco.__version__,
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        **provenance(__file__, sys.argv[1:]),
    }
    write_dataset(out_dir, data, metadata)

if __name__ == "__main__":
    main()
