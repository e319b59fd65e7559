"""Exponential moving average of a network's weights, stepped with the optimizer."""

import copy

import torch
from torch import nn


class EMA:
    """Keeps `ema_network`, an EMA copy of a network.

    Until `start_step` optimizer steps have been taken the copy follows the
    network exactly (the early weights are poor and would drag the average);
    after that, every `update_every` steps: ema = decay * ema + (1 - decay) * weights.
    """

    def __init__(self, network: nn.Module, decay: float = 0.995, start_step: int = 500, update_every: int = 1):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.ema_network = copy.deepcopy(network).requires_grad_(False)
        self.decay = decay
        self.start_step = start_step
        self.update_every = update_every

    @torch.no_grad()
    def update(self, network: nn.Module, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if step <= self.start_step:
            self.ema_network.load_state_dict(network.state_dict())
            return
        if step % self.update_every != 0:
            return
        for ema_param, param in zip(self.ema_network.parameters(), network.parameters()):
            ema_param.lerp_(param, 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.ema_network.buffers(), network.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return self.ema_network.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema_network.load_state_dict(state)
