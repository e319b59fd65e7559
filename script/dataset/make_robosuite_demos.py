"""Make robomimic-style demonstrations of a robosuite task with a scripted expert.

robomimic's datasets cannot be downloaded here, so the project makes its own:
the scripted expert of the task (env/robosuite_experts.py: privileged object
poses, OSC_POSE actions, Gaussian action noise of std `--noise`) runs
`--n-episodes` seeded episodes (seed, seed + 1, ...), and the episodes are
written in robomimic's HDF5 layout:

    data                   attrs: total (steps over all demos), env_args (json: env_name, env_version, type 1, env_kwargs)
    data/demo_<i>          attrs: num_samples (T), seed (of the episode's reset), model_file (the MJCF xml)
        actions (T, Da) float32, rewards (T,) float32, dones (T,) uint8 (1 at success),
        states (T, 1 + nq + nv) float64 (flattened MuJoCo state before each action),
        obs/<key> (T, ...) before each action: `object`, every robot0_* / robot1_* key but proprio-state,
                           and each `--image-keys` key as (T, H, W, 3) uint8, upright

Only successful episodes are kept unless `--keep-failures` (robomimic's
"ph" datasets hold successes only). Unless `--no-convert`, the file is then
converted by convert_robomimic.py into `train.npz` + `metadata.json` beside it
(the expert's success rate and noise go into the metadata).

    python script/dataset/make_robosuite_demos.py --task lift --n-episodes 100 --output data/robomimic/lift/demos.hdf5
"""

import argparse
import json
import os
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from convert_d4rl import ConversionError, positive_int
from convert_robomimic import convert_robomimic

from agent.dataset.writer import provenance, summarize, write_dataset
from env.robosuite_env import GLBackendError, RobosuiteEnv, make_robosuite_env, robosuite_task
from env.robosuite_experts import EXPERTS, PickExpert, make_expert

PROGRESS_EVERY = 10  # episodes between progress lines


def record_episode(env: RobosuiteEnv, expert: PickExpert, seed: int) -> tuple[dict, bool]:
    """One seeded episode of the expert: robomimic arrays (see the module docstring) and whether it succeeded."""
    env.reset(seed=seed)
    expert.reset(env)
    obs, states, actions, rewards, dones = [], [], [], [], []
    done = success = False
    while not done:
        obs.append(env.robomimic_obs())
        states.append(env.sim_state())
        action = expert(env)
        _, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        dones.append(terminated)
        done, success = terminated or truncated, info["success"]
    episode = {
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "dones": np.asarray(dones, dtype=np.uint8),
        "states": np.asarray(states, dtype=np.float64),
        "obs": {key: np.stack([step[key] for step in obs]) for key in obs[0]},
    }
    return episode, success


def write_demo(data: h5py.Group, index: int, episode: dict, seed: int, model_file: str) -> None:
    """`episode` as data/demo_<index>; images are gzip-compressed."""
    demo = data.create_group(f"demo_{index}")
    demo.attrs["num_samples"] = len(episode["actions"])
    demo.attrs["seed"] = seed
    demo.attrs["model_file"] = model_file
    for key in ("actions", "rewards", "dones", "states"):
        demo.create_dataset(key, data=episode[key])
    for key, value in episode["obs"].items():
        compression = "gzip" if value.dtype == np.uint8 and value.ndim == 4 else None
        demo.create_dataset(f"obs/{key}", data=value, compression=compression)


def env_args(env: RobosuiteEnv) -> dict:
    """robomimic's description of the env (type 1 = robosuite); `robosuite.make(env_name, **env_kwargs)` (its
    seed included) rebuilds the same env."""
    import robosuite

    return {"env_name": env.task.env_name, "env_version": robosuite.__version__, "type": 1,
            "env_kwargs": env.env_kwargs}


def make_demos(args) -> dict:
    """Run the expert and write the HDF5 file; return the expert's statistics."""
    env = make_robosuite_env(args.task, seed=args.seed, image_keys=args.image_keys, image_size=args.image_size,
                             cpu_render=args.cpu_render, max_episode_steps=args.max_episode_steps)
    model_file = env.robosuite_env.sim.model.get_xml()
    expert = make_expert(args.task, noise=args.noise, waypoint_noise=args.waypoint_noise, seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    partial = args.output + ".part"
    start = time.time()
    n_success = n_kept = total = 0
    lengths = []
    with h5py.File(partial, "w") as f:
        data = f.create_group("data")
        for episode_index in range(args.n_episodes):
            seed = args.seed + episode_index
            episode, success = record_episode(env, expert, seed)
            n_success += success
            lengths.append(len(episode["actions"]))
            if success or args.keep_failures:
                write_demo(data, n_kept, episode, seed, model_file)
                n_kept += 1
                total += len(episode["actions"])
            done = episode_index + 1
            if done % PROGRESS_EVERY == 0 or done == args.n_episodes:
                print(f"{done}/{args.n_episodes} episodes, success rate {n_success / done:.3f}, "
                      f"{n_kept} demos kept, {time.time() - start:.0f} s", flush=True)
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(env_args(env))
    os.replace(partial, args.output)
    env.close()
    stats = {
        "task": env.task.env_name,
        "noise": args.noise,
        "waypoint_noise": args.waypoint_noise,
        "seed": args.seed,
        "n_attempted": args.n_episodes,
        "n_success": n_success,
        "success_rate": n_success / args.n_episodes,
        "mean_attempt_length": float(np.mean(lengths)),
        "kept": "all episodes" if args.keep_failures else "successes only",
        "minutes": round((time.time() - start) / 60, 2),
    }
    print(f"expert success rate {stats['success_rate']:.3f} ({n_success}/{args.n_episodes}); "
          f"wrote {args.output}: {n_kept} demos, {total} steps")
    return stats


def convert(args, argv: list[str], expert: dict) -> None:
    """train.npz + metadata.json beside the HDF5 file, through convert_robomimic."""
    obs_keys = args.obs_keys or robosuite_task(args.task).state_keys
    data = convert_robomimic(args.output, obs_keys, args.image_keys)
    with h5py.File(args.output, "r") as f:
        stored_env_args = json.loads(f["data"].attrs["env_args"])
    metadata = {
        "source": os.path.abspath(args.output),
        "format": "robomimic",
        "obs_keys": list(obs_keys),
        "image_keys": args.image_keys,
        "obs_dim": int(data["states"].shape[1]),
        "action_dim": int(data["actions"].shape[1]),
        **summarize(data),
        "env_args": stored_env_args,
        "expert": expert,
        **provenance(__file__, argv),
    }
    write_dataset(os.path.dirname(os.path.abspath(args.output)), data, metadata)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help=f"task with a scripted expert: {', '.join(EXPERTS)} or lift, can, "
                        "square")
    parser.add_argument("--n-episodes", type=positive_int, default=100, help="episodes attempted")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise on the arm actions")
    parser.add_argument("--waypoint-noise", type=float, default=0.005,
                        help="largest random offset (m, per axis) of the grasp point")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i; the expert's noise too")
    parser.add_argument("--output", required=True, help="robomimic .hdf5 file to write")
    parser.add_argument("--image-keys", nargs="*", default=[],
                        help="cameras to record, e.g. agentview_image robot0_eye_in_hand_image")
    parser.add_argument("--image-size", type=positive_int, default=96, help="image height and width")
    parser.add_argument("--cpu-render", action="store_true",
                        help="no multisampling or shadows: ~1.8x faster software rendering, images differ from robomimic's")
    parser.add_argument("--max-episode-steps", type=positive_int, default=None,
                        help="time limit of an episode (default: the task's horizon, see env/robosuite_env.py)")
    parser.add_argument("--keep-failures", action="store_true", help="also write the episodes that failed")
    parser.add_argument("--obs-keys", nargs="+", default=None,
                        help="low-dim keys of train.npz's states (default: the task's, see env/robosuite_env.py)")
    parser.add_argument("--no-convert", action="store_true", help="write only the HDF5 file, no train.npz")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    try:
        make_expert(args.task)
        if args.noise < 0 or args.waypoint_noise < 0:
            raise ValueError(f"--noise {args.noise} and --waypoint-noise {args.waypoint_noise} must be >= 0.")
        expert = make_demos(args)
        if not args.no_convert:
            convert(args, argv, expert)
    except (ValueError, GLBackendError, ConversionError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
