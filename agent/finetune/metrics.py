"""Small measures the fine-tuning loop and the algorithms share: means of logged values, explained variance,
wall-clock laps."""

import time

import numpy as np
import torch


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns); nan when the returns do not vary."""
    var_returns = returns.var()
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns - values).var() / var_returns)


def mean_metrics(history: dict[str, list[float]]) -> dict:
    """{key: mean of its values} over the keys that have values."""
    return {key: float(np.mean(values)) for key, values in history.items() if values}


class Timer:
    """Wall-clock seconds since construction or the last `lap()`."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
