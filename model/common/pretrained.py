"""Policy weights of pre-training checkpoints and shipped policy files, for fine-tuning and evaluation.

Shared by every policy (diffusion, flow, Gaussian): pre-training checkpoints carry `ema` (state_<epoch>.pt)
or `network` (policy.pt and the shipped policy files).
"""

import os

from dppo.checkpoint import load_checkpoint


def pretrained_network_state(path: str) -> dict:
    """Network weights of a pre-training checkpoint: its EMA weights, or `network` of a shipped policy file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Pre-trained policy {path} not found: make it with `python script/run.py --config-name=pre_<policy>_mlp "
            f"task=<task> export_policy_path={path}` (policy: diffusion, gaussian or flow), or set base_policy_path."
        )
    weights = denoiser_weights(load_checkpoint(path))
    if weights is not None:
        return weights
    raise ValueError(f"Checkpoint {path} holds neither 'ema' nor 'network' weights: point base_policy_path to a "
                     "checkpoint written by pre-training (checkpoint/state_<epoch>.pt or policy.pt).")


def denoiser_weights(state: dict) -> dict | None:
    """The denoiser weights a pre-training checkpoint carries (`ema` of a state, `network` of a policy file), else None."""
    for key in ("ema", "network"):
        if key in state:
            return state[key]
    return None
