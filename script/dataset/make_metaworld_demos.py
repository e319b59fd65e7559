"""Make demonstrations of a Meta-World task with its scripted expert and action noise.

Meta-World ships a scripted expert for every task (`metaworld.policies`). It succeeds almost
always, so its demonstrations leave behaviour cloning nothing to fix; this maker records it with
Gaussian noise of std `--noise` on every action (clipped to [-1, 1]) and keeps only the first
`--n-demos` successful episodes: few, noisy demos give a cloned policy that succeeds sometimes,
the headroom fine-tuning needs (the paper's robomimic policies start the same way). Episode i is
reset with seed + i (a new object and goal placement each time, see env/metaworld_env.py) and ends
at success or at the task's time limit.

Writes `<out_dir>/train.npz` (states (N, 39), actions (N, 4), rewards, terminals, traj_lengths) and
`<out_dir>/metadata.json` (the expert's success rate over the attempts, noise, seed, command).

    python script/dataset/make_metaworld_demos.py --task pick_place --n-demos 10 --noise 0.3
    python script/dataset/make_metaworld_demos.py --task pick_place --evaluate-expert 50 --noise 0   # writes nothing
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from convert_d4rl import positive_int

from agent.dataset.writer import provenance, summarize, write_dataset
from dppo.config import ConfigError, load_task_config, task_names
from dppo.runtime import package_versions
from env.metaworld_env import MetaWorldEnv, expert_policy


def record_episode(env: MetaWorldEnv, expert, noise: float, rng: np.random.Generator, seed: int) -> tuple[dict, bool]:
    """One episode of the noisy expert: its states, executed actions, rewards and terminal flags, and success."""
    obs, _ = env.reset(seed=seed)
    states, actions, rewards, terminals = [], [], [], []
    done = success = False
    while not done:
        action = expert.get_action(obs["state"].astype(np.float64))
        action = np.clip(action + noise * rng.standard_normal(action.shape), -1.0, 1.0).astype(np.float32)
        next_obs, reward, terminated, truncated, info = env.step(action)
        states.append(obs["state"])
        actions.append(action)
        rewards.append(reward)
        terminals.append(terminated)
        obs, done, success = next_obs, terminated or truncated, info["success"]
    return {"states": states, "actions": actions, "rewards": rewards, "terminals": terminals}, success


def make_demos(env_id: str, env_kwargs: dict, n_demos: int, max_attempts: int, noise: float, seed: int) -> tuple[dict, dict]:
    """Record noisy expert episodes until `n_demos` succeeded (or `max_attempts` ran): the project's arrays of the
    successful ones, and the expert's statistics."""
    env = MetaWorldEnv(env_id, seed=seed, **env_kwargs)
    expert = expert_policy(env_id)
    rng = np.random.default_rng(seed)
    episodes, attempts = [], 0
    start = time.time()
    while len(episodes) < n_demos and attempts < max_attempts:
        episode, success = record_episode(env, expert, noise, rng, seed + attempts)
        attempts += 1
        if success:
            episodes.append(episode)
    env.close()
    if len(episodes) < n_demos:
        raise ValueError(f"the expert with noise {noise} succeeded {len(episodes)} times in {attempts} attempts, fewer "
                         f"than --n-demos {n_demos}: lower --noise or raise --max-attempts.")
    data = {
        "states": np.asarray([s for e in episodes for s in e["states"]], dtype=np.float32),
        "actions": np.asarray([a for e in episodes for a in e["actions"]], dtype=np.float32),
        "rewards": np.asarray([r for e in episodes for r in e["rewards"]], dtype=np.float32),
        "terminals": np.asarray([t for e in episodes for t in e["terminals"]], dtype=bool),
        "traj_lengths": np.asarray([len(e["actions"]) for e in episodes], dtype=np.int64),
    }
    expert_stats = {"policy": type(expert).__name__, "noise": noise, "seed": seed, "n_attempted": attempts,
                    "n_success": len(episodes), "success_rate": len(episodes) / attempts,
                    "kept": "successes only", "seconds": round(time.time() - start, 1)}
    print(f"expert success rate {expert_stats['success_rate']:.3f} ({len(episodes)}/{attempts}), "
          f"{expert_stats['seconds']} s")
    return data, expert_stats


def evaluate_expert(env_id: str, env_kwargs: dict, n_episodes: int, noise: float, seed: int) -> str:
    """The expert's success rate over `n_episodes` episodes (seed, seed + 1, ...), its mean episode length and env
    steps/s (the expert's own computation included), as one line."""
    env = MetaWorldEnv(env_id, seed=seed, **env_kwargs)
    expert = expert_policy(env_id)
    rng = np.random.default_rng(seed)
    start = time.time()
    outcomes = [record_episode(env, expert, noise, rng, seed + i) for i in range(n_episodes)]
    env.close()
    steps = sum(len(episode["actions"]) for episode, _ in outcomes)
    successes = sum(success for _, success in outcomes)
    return (f"{env_id}, noise {noise}: expert success {successes}/{n_episodes}, {steps / n_episodes:.0f} steps per episode, "
            f"{steps / (time.time() - start):.0f} env steps/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="a task of cfg/task with env.family metaworld")
    parser.add_argument("--n-demos", type=positive_int, default=15, help="successful episodes to keep")
    parser.add_argument("--max-attempts", type=positive_int, default=1000, help="episodes to try at most")
    parser.add_argument("--noise", type=float, default=0.3, help="std of the Gaussian noise on every action")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i; the noise too")
    parser.add_argument("--out-dir", default=None, help="default: the task's dataset_dir")
    parser.add_argument("--evaluate-expert", type=positive_int, default=None, metavar="N",
                        help="only run the (noisy) expert for N episodes and print its success rate; write nothing")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        task_cfg = load_task_config(args.task)
        if task_cfg.env.family != "metaworld":
            raise ValueError(f"task {args.task} is a {task_cfg.env.family} task: this script makes demos of metaworld "
                             f"tasks ({', '.join(task_names('metaworld'))}).")
        if args.noise < 0:
            raise ValueError(f"--noise {args.noise} must be >= 0.")
        env_kwargs = dict(task_cfg.env.get("kwargs") or {})
        if args.evaluate_expert:
            print(evaluate_expert(task_cfg.env.id, env_kwargs, args.evaluate_expert, args.noise, args.seed))
            return
        data, expert = make_demos(task_cfg.env.id, env_kwargs, args.n_demos, args.max_attempts, args.noise, args.seed)
    except (ConfigError, ValueError, ImportError) as error:
        sys.exit(f"error: {error}")
    metadata = {
        "task": args.task,
        "env_id": task_cfg.env.id,
        "env_kwargs": env_kwargs,
        "obs_dim": int(data["states"].shape[1]),
        "action_dim": int(data["actions"].shape[1]),
        **summarize(data),
        "expert": expert,
        "versions": package_versions(["metaworld", "mujoco", "numpy"]),
        **provenance(__file__, argv),
    }
    write_dataset(args.out_dir or task_cfg.dataset_dir, data, metadata)


if __name__ == "__main__":
    main()
