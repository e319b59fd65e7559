"""Convert a robomimic HDF5 file into the project's dataset format.

A robomimic file holds one group per demonstration, `data/demo_<i>`, with
`obs/<key>` arrays (T, ...), `actions` (T, Da) and optionally `rewards` (T,)
and `dones` (T,). Demos are taken in the order of their integer index
(demo_2 before demo_10). `states` (N, Do) is the concatenation of the
`--obs-keys` in the order given; `--image-keys` are stored as `images`
(N, C, H, W) uint8, several keys concatenated along channels (robomimic stores
images as (T, H, W, C)). `--filter-key` takes only the demos robomimic's filter key
lists (`mask/<key>`: `train`, `valid`, `20_percent`, ... in robomimic's
datasets). Only h5py is needed: robomimic 0.3.0 reads the same files (its
SequenceDataset is the tests' oracle of this converter), but its file utilities
import torchvision and its env wrapper mujoco_py, and it predates the v1.5
datasets and robosuite 1.5, so the converter reads the layout itself.

Writes `<output-dir>/train.npz` (states, actions, traj_lengths, and rewards,
terminals, images when present) and `<output-dir>/metadata.json`.

    python script/dataset/convert_robomimic.py --input can/ph/low_dim_v15.hdf5 --output-dir data/robomimic/can
"""

import argparse
import json
import os
import sys

import h5py
import numpy as np
from convert_d4rl import ConversionError, positive_int

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from agent.dataset.writer import provenance, summarize, write_dataset  # noqa: E402

DEFAULT_OBS_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")


def sort_demo_names(names) -> list[str]:
    """Names `demo_<i>` sorted by their integer index i, not as strings."""
    def index(name: str) -> int:
        prefix, _, number = name.partition("_")
        if prefix != "demo" or not number.isdigit():
            raise ConversionError(f"Group data/{name} is not named demo_<i>: a robomimic file holds only "
                                  "data/demo_<i> groups under data/.")
        return int(number)

    return sorted(names, key=index)


def demo_names(f: h5py.File, filter_key: str | None) -> list[str]:
    """The demos of the file, or of its filter key `mask/<filter_key>` (names stored as bytes), by integer index."""
    if filter_key is None:
        return sort_demo_names(f["data"].keys())
    masks = sorted(f["mask"].keys()) if "mask" in f else []
    if filter_key not in masks:
        raise ConversionError(f"no filter key '{filter_key}' (mask/{filter_key}): the file's filter keys are {masks}; "
                              "pass one of them to --filter-key or leave it out.")
    names = [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in f["mask"][filter_key][()]]
    missing = [name for name in names if name not in f["data"]]
    if missing:
        raise ConversionError(f"mask/{filter_key} lists demos the file lacks under data/: {missing[:5]}.")
    return sort_demo_names(names)


def read_demo(demo: h5py.Group, obs_keys, image_keys) -> dict:
    """One demo's T steps: `states` (T, Do), `actions` (T, Da), and `images` (T, C, H, W) when
    `image_keys` are given, `rewards` (T,) / `terminals` (T,) when the demo has `rewards` / `dones`."""
    available = sorted(demo["obs"].keys()) if "obs" in demo else []
    for key in (*obs_keys, *image_keys):
        if key not in available:
            raise ConversionError(f"{demo.name} has no obs key '{key}': its obs keys are {available}; "
                                  "choose --obs-keys / --image-keys among them.")
    if "actions" not in demo:
        raise ConversionError(f"{demo.name} has no 'actions': a robomimic demo must contain obs/<key> and actions.")
    actions = np.asarray(demo["actions"][()], dtype=np.float32)
    n_steps = len(actions)
    obs = {key: demo["obs"][key][()] for key in (*obs_keys, *image_keys)}
    for key, value in obs.items():
        if len(value) != n_steps:
            raise ConversionError(f"{demo.name}/obs/{key} has {len(value)} steps but {demo.name}/actions has "
                                  f"{n_steps}: the file is inconsistent, regenerate it.")
    states = [np.asarray(obs[key], dtype=np.float32).reshape(n_steps, -1) for key in obs_keys]
    arrays = {"states": np.concatenate(states, axis=1), "actions": actions}
    if image_keys:
        images = [channels_first(obs[key], f"{demo.name}/obs/{key}") for key in image_keys]
        if len({image.shape[2:] for image in images}) > 1:
            raise ConversionError(f"{demo.name}: images {list(image_keys)} differ in height/width "
                                  f"{[image.shape[2:] for image in images]}: pass image keys of one size.")
        arrays["images"] = np.concatenate(images, axis=1)
    if "rewards" in demo:
        arrays["rewards"] = np.asarray(demo["rewards"][()], dtype=np.float32).reshape(n_steps)
    if "dones" in demo:
        arrays["terminals"] = np.asarray(demo["dones"][()]).reshape(n_steps).astype(bool)
    return arrays


def channels_first(images: np.ndarray, name: str) -> np.ndarray:
    """Images (T, H, W, C) uint8 -> (T, C, H, W) uint8; `name` says where they come from in errors."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ConversionError(f"{name} is {images.dtype} of shape {images.shape}, not (T, H, W, C) uint8: "
                              "pass only image observations to --image-keys.")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def convert_robomimic(path: str, obs_keys=DEFAULT_OBS_KEYS, image_keys=(), max_episodes: int | None = None,
                      filter_key: str | None = None) -> dict:
    """robomimic HDF5 -> project arrays over the first `max_episodes` demos (by integer index) of the file, or of
    its filter key `mask/<filter_key>`.

    Returns `states` (N, Do) float32, `actions` (N, Da) float32, `traj_lengths`
    (E,) int64, and `images` (N, C, H, W) uint8 when `image_keys` are given,
    `rewards` (N,) float32 / `terminals` (N,) bool when every demo has
    `rewards` / `dones`.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"Input {path} not found: pass an existing robomimic .hdf5 file to --input.")
    with h5py.File(path, "r") as f:
        if "data" not in f or len(f["data"]) == 0:
            raise ConversionError(f"Input {path} has no data/demo_<i> groups: give a robomimic dataset file.")
        try:
            names = demo_names(f, filter_key)[:max_episodes]
            demos = [read_demo(f["data"][name], obs_keys, image_keys) for name in names]
        except ConversionError as error:
            raise ConversionError(f"Input {path}: {error}") from None
    data = {key: np.concatenate([demo[key] for demo in demos]) for key in ("states", "actions")}
    data["traj_lengths"] = np.array([len(demo["actions"]) for demo in demos], dtype=np.int64)
    for key in ("images", "rewards", "terminals"):
        if all(key in demo for demo in demos):
            data[key] = np.concatenate([demo[key] for demo in demos])
    return data


def read_env_args(path: str) -> dict | None:
    """The environment description robomimic stores in the `env_args` attribute of `data`, if any."""
    with h5py.File(path, "r") as f:
        env_args = f["data"].attrs.get("env_args")
    return None if env_args is None else json.loads(env_args)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="robomimic .hdf5 file")
    parser.add_argument("--output-dir", required=True, help="where train.npz and metadata.json are written")
    parser.add_argument("--obs-keys", nargs="+", default=list(DEFAULT_OBS_KEYS),
                        help="low-dim obs keys concatenated, in this order, into states")
    parser.add_argument("--image-keys", nargs="*", default=[], help="image obs keys stored as images (N, C, H, W)")
    parser.add_argument("--max-episodes", type=positive_int, default=None, help="keep only the first demos")
    parser.add_argument("--filter-key", default=None,
                        help="only the demos of robomimic's filter key mask/<key> (e.g. train, valid, 20_percent)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    try:
        data = convert_robomimic(args.input, args.obs_keys, args.image_keys, args.max_episodes, args.filter_key)
    except ConversionError as error:
        sys.exit(f"error: {error}")
    metadata = {
        "source": os.path.abspath(args.input),
        "format": "robomimic",
        "obs_keys": args.obs_keys,
        "image_keys": args.image_keys,
        "obs_dim": int(data["states"].shape[1]),
        "action_dim": int(data["actions"].shape[1]),
        **summarize(data),
        "max_episodes": args.max_episodes,
        "filter_key": args.filter_key,
        "env_args": read_env_args(args.input),
        **provenance(__file__, argv),
    }
    write_dataset(args.output_dir, data, metadata)


if __name__ == "__main__":
    main()
