"""The optimizer of every training loop: AdamW, with torch's fused kernel where the device has one."""

import torch

FUSED_DEVICE_TYPES = ("cpu", "cuda")


def adamw(parameters, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    """AdamW over `parameters` (on `device`). On CPU and CUDA it is torch's fused implementation, one kernel over
    every parameter instead of a Python loop of small ops: a step for the 512-wide Hopper denoiser takes 0.52 ms
    fused against 3.65 ms looped on 1 CPU thread (docs/PERFORMANCE.md), which matters for the off-policy
    algorithms' thousands of small steps per iteration. Same update rule; results agree to float rounding."""
    fused = torch.device(device).type in FUSED_DEVICE_TYPES
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)
