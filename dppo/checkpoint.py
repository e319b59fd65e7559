"""Saving, loading and resuming checkpoints.

A run keeps its checkpoints in `<run_dir>/checkpoint/`: `state_<itr>.pt` for
each saved iteration and `last.pt` for the most recent one, which is what a
resumed run loads. Every file is written atomically, so a crash during a save
leaves the previous checkpoint intact.
"""

import os
import pickle
import random

import numpy as np
import torch

from dppo.paths import atomic_write

# The layout of a fine-tuning checkpoint: 2, modules by attribute name (the policy apart from the critics);
# 1, one model holding its critics. Written by FinetuneAgent.save, checked by its load and by evaluation.
FINETUNE_CHECKPOINT_FORMAT = 2
ARCHITECTURE_FIX = (
    "the checkpoint's architecture differs from the config: match the config's model dims to the checkpoint "
    "or use another checkpoint"
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects that `torch.load(weights_only=True)` refuses to build."""


def save_checkpoint(path: str, state: dict) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, rename); creates parent dirs."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; raises one-line errors for missing or corrupt files.

    Loads with `weights_only=True`: tensors, numbers, strings, None and containers of them, nothing
    that could run code. A checkpoint holding other pickled objects raises `UnsafeCheckpointError`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} not found: check the path, or train first to create it.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():  # not a refused object: a damaged pickle stream
            raise ValueError(f"Checkpoint {path} is corrupt or unreadable ({_one_line(e)}): delete it or point to "
                             "another checkpoint.") from e
        raise UnsafeCheckpointError(
            f"Checkpoint {path} was refused: it holds Python objects other than tensors and plain data, which could "
            "run code when loaded; load only checkpoints written by dppo, or re-save its tensors from a trusted copy."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"Checkpoint {path} is corrupt or unreadable ({_one_line(e)}): delete it or point to another checkpoint."
        ) from e
    if not isinstance(state, dict):
        raise ValueError(
            f"Checkpoint {path} holds a {type(state).__name__}, not a dict of states: "
            "point to a checkpoint saved by dppo."
        )
    return state


def _one_line(error: Exception) -> str:
    """`Type: first line of the message` of an exception."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_state_dict_checked(module: torch.nn.Module, state_dict: dict, what: str = "model") -> None:
    """Load `state_dict` into `module` after checking that keys and shapes match, with a one-line error if not.

    `what` names the checkpoint in the error (usually its path).
    """
    module_name = type(module).__name__
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {what} does not fit the {module_name}: missing keys {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}, unexpected keys {unexpected[:3]}"
            f"{' ...' if len(unexpected) > 3 else ''}; {ARCHITECTURE_FIX}."
        )
    for key, value in expected.items():
        loaded = state_dict[key]
        if isinstance(value, torch.Tensor) and isinstance(loaded, torch.Tensor) and value.shape != loaded.shape:
            raise ValueError(
                f"Checkpoint {what}: '{key}' has shape {tuple(loaded.shape)} but the {module_name} expects "
                f"{tuple(value.shape)}; {ARCHITECTURE_FIX}."
            )
    module.load_state_dict(state_dict)


def checkpoint_dir(run_dir: str) -> str:
    """`<run_dir>/checkpoint`."""
    return os.path.join(run_dir, "checkpoint")


def checkpoint_path(run_dir: str, itr: int) -> str:
    """`<run_dir>/checkpoint/state_<itr>.pt`."""
    return os.path.join(checkpoint_dir(run_dir), f"state_{itr}.pt")


def last_checkpoint_path(run_dir: str) -> str:
    """`<run_dir>/checkpoint/last.pt`, the checkpoint a resumed run starts from."""
    return os.path.join(checkpoint_dir(run_dir), "last.pt")


def find_resume_checkpoint(resume: str, run_dir_hint: str | None = None) -> str:
    """Resolve `resume` to a checkpoint file.

    `resume` is a `.pt` file or a run directory (whose `checkpoint/last.pt` is
    used). A relative `resume` that does not exist from the working directory
    is also looked up under `run_dir_hint` (e.g. the log root).
    """
    candidates = [resume]
    if run_dir_hint is not None and not os.path.isabs(resume):
        candidates.append(os.path.join(run_dir_hint, resume))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
        if os.path.isdir(candidate) and os.path.isfile(last_checkpoint_path(candidate)):
            return last_checkpoint_path(candidate)
    raise FileNotFoundError(
        f"Cannot resume from {resume!r}: tried {candidates}; give a checkpoint .pt file or a run directory "
        "that holds checkpoint/last.pt."
    )


def resolve_resume(resume, logdir: str) -> tuple[str, str] | None:
    """Where a run whose configured run directory is `logdir` resumes from. `resume` is
    - null: a fresh run;
    - true: the latest run beside `logdir` (same parent: the runs of one name) that has checkpoint/last.pt;
    - auto: `logdir` itself when it has checkpoint/last.pt, else a fresh run, so that one command line with a
      fixed `logdir` serves a first launch and every relaunch of it (a requeued cluster job, a sweep started
      again: each job continues where it stopped);
    - a run directory or checkpoint file.

    Returns (checkpoint_path, run_dir), or None for a fresh run.
    """
    name_dir = os.path.dirname(logdir)
    if resume is None or resume is False:
        return None
    if str(resume).lower() == "auto":
        checkpoint = last_checkpoint_path(logdir)
        return (checkpoint, logdir) if os.path.isfile(checkpoint) else None
    if resume is True or str(resume).lower() == "true":
        runs = sorted(os.listdir(name_dir)) if os.path.isdir(name_dir) else []
        runs = [os.path.join(name_dir, run) for run in runs if os.path.isfile(last_checkpoint_path(os.path.join(name_dir, run)))]
        if not runs:
            raise FileNotFoundError(f"resume=true found no run with checkpoint/last.pt under {name_dir}: "
                                    "start a fresh run or pass resume=<run dir>.")
        return last_checkpoint_path(runs[-1]), runs[-1]
    path = os.path.abspath(find_resume_checkpoint(str(resume), run_dir_hint=name_dir))
    return path, os.path.dirname(os.path.dirname(path))


def rng_state() -> dict:
    """States of python `random`, the numpy global RNG, torch CPU and (when available) all CUDA RNGs.

    Plain data and tensors only (numpy's key array is stored as a tensor), so it loads with weights_only.
    """
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (bit_generator, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    """Restore the RNG states captured by `rng_state`, so random streams continue where they stopped.

    CUDA states are restored for the devices present in both the checkpoint and this machine.
    """
    random.setstate(state["python"])
    bit_generator, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((bit_generator, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
