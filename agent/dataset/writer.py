"""Writing datasets in the project's format: `train.npz` + `metadata.json` in one directory.

Used by every script that makes or converts demonstrations (script/dataset/).
"""

import json
import os
import shlex
import time

import numpy as np


def summarize(data: dict) -> dict:
    """Counts of project arrays for metadata.json, and the mean/std undiscounted episode return when
    `rewards` (N,) exist."""
    traj_lengths = data["traj_lengths"]
    summary = {"n_episodes": int(len(traj_lengths)), "n_transitions": int(traj_lengths.sum())}
    if "rewards" in data:
        episode_starts = np.concatenate([[0], np.cumsum(traj_lengths)[:-1]])
        returns = np.add.reduceat(data["rewards"].astype(np.float64), episode_starts)
        summary.update(mean_return=float(returns.mean()), std_return=float(returns.std()))
    return summary


def provenance(script_file: str, argv: list[str]) -> dict:
    """The shell command that ran `script_file` (a file of script/dataset) with `argv`, and when."""
    command = shlex.join(["python", os.path.join("script", "dataset", os.path.basename(script_file)), *argv])
    return {"command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_dataset(output_dir: str, data: dict, metadata: dict) -> str:
    """Write `data` to `<output_dir>/train.npz` and `metadata` to `<output_dir>/metadata.json`; return the npz path."""
    os.makedirs(output_dir, exist_ok=True)
    dataset_path = os.path.join(output_dir, "train.npz")
    np.savez_compressed(dataset_path, **data)
    with open(os.path.join(output_dir, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    returns = f", mean return {metadata['mean_return']:.1f}" if "mean_return" in metadata else ""
    print(f"wrote {dataset_path}: {metadata['n_episodes']} episodes, {metadata['n_transitions']} transitions{returns}")
    return dataset_path
