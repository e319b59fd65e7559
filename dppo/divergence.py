"""Stop a run whose losses or weights stop being finite, before anything non-finite is saved."""

import math

import torch

LIKELY_CAUSES = ("a learning rate too high for the batch, NaN or huge rewards or observations from the env, "
                 "or a custom loss dividing by zero")


class NonFiniteError(RuntimeError):
    """Training produced NaN/inf; the message is one line naming where, the likely causes and the fix."""


def check_finite(where: str, metrics: dict, module: torch.nn.Module, last_good: str) -> None:
    """Raise NonFiniteError when a metric named like a loss or any weight of `module` is NaN/inf.

    where: e.g. "Iteration 7"; last_good: what stays untouched, e.g. "checkpoint/last.pt (iteration 6)".
    """
    bad = sorted(key for key, value in metrics.items() if "loss" in key and not math.isfinite(value))
    bad += [f"weights {name}" for name, param in module.named_parameters() if not torch.isfinite(param).all()][:3]
    if bad:
        raise NonFiniteError(
            f"{where}: non-finite {', '.join(bad)}; the run stopped before saving, {last_good} is untouched. "
            f"Likely causes: {LIKELY_CAUSES}. Fix the cause (e.g. lower the learning rate) and resume."
        )
