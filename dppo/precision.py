"""Mixed precision of the training updates: `precision: fp32 | bf16` (config key; `${default_precision:${device}}`).

bf16 runs the forward passes of every update (fine-tuning losses, pre-training's BC loss) and of rollout
sampling under `torch.autocast(dtype=torch.bfloat16)`: matmuls and convolutions in bfloat16, with float32 master
weights, float32 gradients and float32 optimizer state (backward and the optimizer step run outside autocast).
The networks' output layers stay in float32 (model/common/mlp.py `OutputLinear`), so values, noise predictions
and Gaussian means leave a network unrounded and every loss is computed in float32. Evaluation acts in float32.
PPO recomputes the old log-probabilities on the update's bf16 path (agent/finetune/ppo.py), so a fresh
minibatch has ratio 1.

The default is bf16 where the hardware has bf16 matrix units (CPUs with avx512_bf16 or amx_bf16; CUDA GPUs that
support bf16), fp32 elsewhere; docs/PERFORMANCE.md has the speed-ups and the learning-parity runs that decided it.
"""

import contextlib
import functools

import torch

PRECISIONS = ("fp32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str) -> bool:
    """Whether `device` ('cpu', 'cuda', 'cuda:1', ...) multiplies bf16 matrices natively."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def default_precision(device: str) -> str:
    """'bf16' where `device` does bf16 natively, else 'fp32' (the `${default_precision:${device}}` resolver)."""
    return "bf16" if native_bf16(device) else "fp32"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}.")
    return precision


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """The context the forward passes of an update run in: bf16 autocast for 'bf16', nothing for 'fp32'."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
