"""Convert a D4RL-style file into the project's dataset format.

The input (HDF5 `.hdf5`/`.h5`, or `.npz`) holds flat arrays over N transitions:
`observations` (N, Do), `actions` (N, Da), `rewards` (N,), `terminals` (N,) and
optionally `timeouts` (N,). An episode ends at a step whose `terminals` or
`timeouts` is true; steps after the last end form one more (partial) episode.

Writes `<output-dir>/train.npz` (states, actions, rewards, terminals,
traj_lengths) and `<output-dir>/metadata.json` (source, counts, episode
returns, the command).

    python script/dataset/convert_d4rl.py --input hopper-medium-v2.hdf5 --output-dir data/gym/hopper-medium-v2

This file also holds `ConversionError` and `positive_int`, which
`convert_robomimic.py` shares; writing goes through `agent.dataset.writer`.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from agent.dataset.writer import provenance, summarize, write_dataset  # noqa: E402

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
OPTIONAL_KEYS = ("timeouts",)


class ConversionError(ValueError):
    """An input the converters cannot use; its message is one line that names the fix."""


def load_d4rl_file(path: str) -> dict:
    """The D4RL arrays (`REQUIRED_KEYS` and `OPTIONAL_KEYS` that exist) of an HDF5 or npz file."""
    if not os.path.isfile(path):
        raise ConversionError(f"Input {path} not found: pass an existing file to --input.")
    wanted = REQUIRED_KEYS + OPTIONAL_KEYS
    extension = os.path.splitext(path)[1].lower()
    if extension in (".hdf5", ".h5"):
        import h5py

        with h5py.File(path, "r") as f:
            return {key: f[key][()] for key in wanted if key in f}
    if extension == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in wanted if key in data}
    raise ConversionError(f"Input {path} has extension '{extension}': give an .hdf5, .h5 or .npz file.")


def split_episodes(terminals: np.ndarray, timeouts: np.ndarray | None = None) -> np.ndarray:
    """Episode lengths (E,) int64 of flags (N,): an episode ends where `terminals` or `timeouts` is true.

    Steps after the last end flag make one more episode, so the lengths sum to N.
    """
    ends = np.asarray(terminals).reshape(-1).astype(bool)
    if timeouts is not None:
        ends = ends | np.asarray(timeouts).reshape(-1).astype(bool)
    boundaries = np.concatenate([[0], np.flatnonzero(ends) + 1])
    if boundaries[-1] != len(ends):
        boundaries = np.append(boundaries, len(ends))
    return np.diff(boundaries).astype(np.int64)


def select_episodes(traj_lengths: np.ndarray, min_episode_length: int = 1,
                    max_episodes: int | None = None) -> np.ndarray:
    """Which episodes (E,) bool to keep: the first `max_episodes` of those at least `min_episode_length` long."""
    keep = traj_lengths >= min_episode_length
    if max_episodes is not None:
        keep &= np.cumsum(keep) <= max_episodes
    return keep


def convert_d4rl(arrays: dict, min_episode_length: int = 1, max_episodes: int | None = None,
                 source: str = "The input") -> dict:
    """D4RL arrays -> project arrays.

    Returns `states` (N', Do) float32, `actions` (N', Da) float32, `rewards` (N',)
    float32, `terminals` (N',) bool (true environment terminations only, not
    timeouts) and `traj_lengths` (E',) int64, for the selected episodes.
    """
    for key in REQUIRED_KEYS:
        if key not in arrays:
            raise ConversionError(f"{source} lacks '{key}': a D4RL-style file must contain "
                                  f"{', '.join(REQUIRED_KEYS)} (and optionally {', '.join(OPTIONAL_KEYS)}).")
    n_steps = len(arrays["observations"])
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key in arrays and len(arrays[key]) != n_steps:
            raise ConversionError(f"{source} has {len(arrays[key])} '{key}' but {n_steps} 'observations': "
                                  "every array must have one entry per transition.")
    traj_lengths = split_episodes(arrays["terminals"], arrays.get("timeouts"))
    keep = select_episodes(traj_lengths, min_episode_length, max_episodes)
    if not keep.any():
        raise ConversionError(f"{source} has no episode of at least {min_episode_length} steps: "
                              "lower --min-episode-length.")
    steps = np.repeat(keep, traj_lengths)
    return {
        "states": np.asarray(arrays["observations"], dtype=np.float32)[steps],
        "actions": np.asarray(arrays["actions"], dtype=np.float32)[steps],
        "rewards": np.asarray(arrays["rewards"], dtype=np.float32).reshape(n_steps)[steps],
        "terminals": np.asarray(arrays["terminals"]).reshape(n_steps).astype(bool)[steps],
        "traj_lengths": traj_lengths[keep],
    }





def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="D4RL-style .hdf5, .h5 or .npz file")
    parser.add_argument("--output-dir", required=True, help="where train.npz and metadata.json are written")
    parser.add_argument("--max-episodes", type=positive_int, default=None, help="keep only the first episodes")
    parser.add_argument("--min-episode-length", type=positive_int, default=1, help="drop episodes shorter than this")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    try:
        arrays = load_d4rl_file(args.input)
        data = convert_d4rl(arrays, args.min_episode_length, args.max_episodes, source=f"Input {args.input}")
    except ConversionError as error:
        sys.exit(f"error: {error}")
    metadata = {
        "source": os.path.abspath(args.input),
        "format": "d4rl",
        **summarize(data),
        "n_source_episodes": int(len(split_episodes(arrays["terminals"], arrays.get("timeouts")))),
        "n_source_transitions": int(len(arrays["observations"])),
        "episode_ends": "terminals or timeouts" if "timeouts" in arrays else "terminals",
        "min_episode_length": args.min_episode_length,
        "max_episodes": args.max_episodes,
        **provenance(__file__, argv),
    }
    write_dataset(args.output_dir, data, metadata)


if __name__ == "__main__":
    main()
