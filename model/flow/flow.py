"""Flow-matching policy over action chunks (rectified flow / conditional flow matching).

Noise x_0 ~ N(0, I) at t = 0 flows to the action chunk x_1 at t = 1 along the straight path
x_t = (1 - t) x_0 + t x_1, whose velocity is x_1 - x_0. The network regresses that velocity;
sampling integrates dx/dt = v(x, t, s) with K Euler steps of size 1 / K (K = 1, 2, 4 are typical).
The denoiser networks of the diffusion policy serve as velocity networks: their time input is
t * `time_scale` (the sinusoidal embedding resolves steps of order 1, as the diffusion step index).
"""

import torch
import torch.nn.functional as F
from torch import nn

from model.common.policy import ChunkPolicy, Sample

TIME_SCALE = 100.0


class FlowModel(ChunkPolicy):
    """Flow-matching policy: `bc_loss(actions, cond)` for behaviour cloning, Euler `sample` with `inference_steps`.

    time_sampling: "uniform" t ~ U(0, 1), or "beta" t ~ Beta(time_beta_a, time_beta_b), which with
    a > b puts more training on the late, action-shaping part of the path.
    """

    def __init__(self, network: nn.Module, horizon_steps: int, obs_dim: int, action_dim: int, cond_steps: int = 1,
                 inference_steps: int = 4, time_sampling: str = "uniform", time_beta_a: float = 1.5,
                 time_beta_b: float = 1.0, time_scale: float = TIME_SCALE, randn_clip_value: float = 3.0,
                 final_action_clip_value: float | None = 1.0, network_path: str | None = None, device: str = "cpu"):
        super().__init__(network, horizon_steps, obs_dim, action_dim, cond_steps, randn_clip_value,
                         final_action_clip_value, network_path)
        if time_sampling not in ("uniform", "beta"):
            raise ValueError(f"time_sampling={time_sampling!r}: use 'uniform' or 'beta'.")
        if inference_steps < 1:
            raise ValueError(f"inference_steps={inference_steps} must be >= 1 (1, 2 or 4 are typical).")
        self.inference_steps = inference_steps
        self.time_sampling = time_sampling
        self.time_beta = (time_beta_a, time_beta_b)
        self.time_scale = time_scale
        self.to(device)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict, network: nn.Module | None = None) -> torch.Tensor:
        """v(x, t, s): x (B, Ta, Da), t (B,) in [0, 1] -> (B, Ta, Da)."""
        return (network or self.network)(x, t * self.time_scale, cond)

    # ---- behaviour cloning ----------------------------------------------------------------------
    def draw_times(self, batch: int) -> torch.Tensor:
        """(batch,) training times in [0, 1]."""
        if self.time_sampling == "uniform":
            return torch.rand(batch, device=self.device)
        a, b = self.time_beta
        return torch.distributions.Beta(a, b).sample((batch,)).to(self.device)

    def per_sample_bc_loss(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        """Flow-matching loss of each chunk: MSE between v(x_t, t, s) and x_1 - x_0 averaged over its Ta x Da
        elements. actions: (B, Ta, Da) -> (B,)."""
        t = self.draw_times(actions.shape[0])
        noise = torch.randn_like(actions)
        x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * actions
        return F.mse_loss(self.velocity(x_t, t, cond), actions - noise, reduction="none").mean(dim=(-2, -1))

    # ---- sampling -------------------------------------------------------------------------------
    def initial_noise(self, batch: int) -> torch.Tensor:
        """x_0: (batch, Ta, Da) unit normal draws clipped to +-randn_clip_value."""
        x = torch.randn(batch, self.horizon_steps, self.action_dim, device=self.device)
        return x.clamp(-self.randn_clip_value, self.randn_clip_value)

    def times(self) -> list[float]:
        """The K Euler step start times 0, 1/K, ..., (K-1)/K."""
        return [k / self.inference_steps for k in range(self.inference_steps)]

    @torch.no_grad()
    def sample(self, cond: dict, deterministic: bool = True, noise: torch.Tensor | None = None) -> Sample:
        """Action chunks (B, Ta, Da) by K Euler steps from the initial noise x_0 (B, Ta, Da) (default: a fresh
        clipped draw, `initial_noise`); the flow itself is deterministic."""
        batch = cond["state"].shape[0]
        x = self.initial_noise(batch) if noise is None else noise
        dt = 1.0 / self.inference_steps
        for t in self.times():
            x = x + dt * self.velocity(x, torch.full((batch,), t, device=self.device), cond)
        return Sample(actions=self.clip_final(x))

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Chunks from fresh noise (the only randomness of a flow policy) and nothing stored."""
        return self.sample(cond).actions, {}

    decodes_noise = True

    def act(self, cond: dict, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Chunks (B, Ta, Da) integrated from fresh noise, or from the given initial noise x_0 (B, Ta, Da)."""
        return self.sample(cond, noise=noise).actions
