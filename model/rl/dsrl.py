"""DSRL (Wagenmaker et al. 2025, "Steering Your Diffusion Policy with Latent Space Reinforcement Learning").

The BC policy stays frozen. A small SAC agent chooses the initial noise w (Ta, Da) of its denoising chain, and the
policy decodes w deterministically (`act(cond, noise)`) into the chunk the env executes. The noise actor is a
tanh-squashed Gaussian over u in (-1, 1)^(Ta Da), and w = action_magnitude * u; as in Stable-Baselines3 (whose
SAC the reference runs over a Box of +-action_magnitude), every network sees u, the noise in the actor's units,
and the log-probabilities are those of u.

- DSRL-SAC: plain SAC over u; critics Q(s, u) on the replayed noise.
- DSRL-NA (noise aliasing): critics Q^A(s, a) on the executed chunk, TD towards
  r + gamma (1 - terminated) (min_i Q^A_targ(s', decode(s', w')) - alpha log pi(u' | s')), u' ~ pi(s');
  a noise critic Q^W_i(s, u) fit to Q^A_i(s, decode(s, w)) for fresh w ~ N(0, I); the actor maximizes min_i Q^W_i.

Critics are `CriticEnsemble`s: values (n, B), one row per critic.
"""

import math

import torch
from torch import nn

from model.common.mlp import MLP
from model.common.policy import ChunkPolicy

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the clamp of Stable-Baselines3's SAC actor
TANH_EPS = 1e-6  # log(1 - tanh(z)^2 + TANH_EPS): Stable-Baselines3's guard for |u| -> 1 (the reference's log-probs)


def squashed_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u = tanh(z), z ~ N(mean, exp(log_std)^2) (reparameterized), and log pi(u) = log N(z) - log(1 - u^2), summed
    over the last dim with the tanh correction's TANH_EPS. mean, log_std: (B, D) -> u (B, D), log_prob (B,)."""
    std = log_std.exp()
    z = mean + std * torch.randn_like(mean)
    u = torch.tanh(z)
    gaussian = -0.5 * ((z - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return u, (gaussian - torch.log(1 - u**2 + TANH_EPS)).sum(-1)


class NoiseActor(nn.Module):
    """pi(u | s): a tanh-squashed Gaussian over the flattened noise u in (-1, 1)^(Ta Da), from an MLP (Linear ->
    [LayerNorm] -> activation per hidden layer) with a mean and a log-std head (log-std clamped to [-20, 2]).

    cond["state"]: (B, To, Do) -> `sample`: u (B, Ta * Da), log_prob (B,); `mode`: tanh(mean) (B, Ta * Da).
    """

    def __init__(self, cond_dim: int, horizon_steps: int, action_dim: int, mlp_dims: list[int],
                 activation: str = "Tanh", use_layernorm: bool = True):
        super().__init__()
        self.noise_dim = horizon_steps * action_dim
        self.net = MLP(cond_dim, list(mlp_dims), 2 * self.noise_dim, activation=activation,
                       use_layernorm=use_layernorm)

    def forward(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-std of z: (B, Ta * Da) each."""
        state = cond["state"]
        mean, log_std = self.net(state.reshape(state.shape[0], -1)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return squashed_gaussian_sample(*self(cond))

    def mode(self, cond: dict) -> torch.Tensor:
        return torch.tanh(self(cond)[0])


class EntropyTemperature(nn.Module):
    """SAC's learned entropy coefficient alpha = exp(log_alpha), a module so that it checkpoints with the agent.

    loss(log_prob (B,)) = -mean(log_alpha * (log_prob + target_entropy)): alpha rises while the policy's entropy
    -log_prob is below target_entropy. Losses that use alpha take `alpha()` without gradient.
    """

    def __init__(self, initial: float = 1.0, target_entropy: float = 0.0):
        super().__init__()
        if initial <= 0:
            raise ValueError(f"The initial entropy temperature must be > 0, got {initial}: use e.g. 1.0.")
        self.log_alpha = nn.Parameter(torch.tensor(math.log(initial)))
        self.target_entropy = target_entropy

    def alpha(self) -> torch.Tensor:
        """alpha, 0-dim, without gradient."""
        return self.log_alpha.detach().exp()

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()


class NoiseSteering:
    """The frozen policy steered by a noise actor: u -> w = action_magnitude * u (B, Ta, Da) -> `policy.act(cond, w)`.

    `base_explore` acts as the BC policy does, w ~ N(0, I) (clipped to +-action_magnitude when `clip_base_noise`),
    for the replay's first steps. Every acting method returns chunks (B, Ta, Da) and {"noise": u (B, Ta, Da)}.
    """

    def __init__(self, policy: ChunkPolicy, actor: NoiseActor, action_magnitude: float, clip_base_noise: bool):
        if not policy.decodes_noise:
            raise ValueError(f"DSRL steers the initial noise of a denoising chain and {type(policy).__name__} draws "
                             "its chunk without one: use policy=diffusion or policy=flow.")
        self.policy = policy
        self.actor = actor
        self.action_magnitude = action_magnitude
        self.clip_base_noise = clip_base_noise
        self.noise_shape = (policy.horizon_steps, policy.action_dim)

    def decode(self, cond: dict, u: torch.Tensor) -> torch.Tensor:
        """Chunks (B, Ta, Da) the policy decodes from the noise w = action_magnitude * u, u: (B, Ta * Da) or
        (B, Ta, Da)."""
        return self.policy.act(cond, noise=self.action_magnitude * u.reshape(u.shape[0], *self.noise_shape))

    @torch.no_grad()
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        u = self.actor.sample(cond)[0]
        return self.decode(cond, u), {"noise": u.view(-1, *self.noise_shape)}

    @torch.no_grad()
    def base_explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        w = torch.randn(cond["state"].shape[0], *self.noise_shape, device=cond["state"].device)
        if self.clip_base_noise:
            w = w.clamp(-self.action_magnitude, self.action_magnitude)
        u = w / self.action_magnitude
        return self.decode(cond, u), {"noise": u}

    @torch.no_grad()
    def act(self, cond: dict) -> torch.Tensor:
        """Deterministic chunks (B, Ta, Da): the decoded noise of the actor's mode tanh(mean)."""
        return self.decode(cond, self.actor.mode(cond))


def soft_td_targets(next_q: torch.Tensor, next_log_prob: torch.Tensor, rewards: torch.Tensor,
                    terminated: torch.Tensor, gamma: float, alpha: torch.Tensor) -> torch.Tensor:
    """r + gamma (1 - terminated) (min_i Q_targ_i(s', x') - alpha log pi(u' | s')).

    next_q: (n, B) target critics at the next state and its next input x' (DSRL-SAC: u'; NA: the decoded chunk);
    next_log_prob, rewards: (B,), terminated: (B,) bool -> (B,).
    """
    soft_value = next_q.min(dim=0).values - alpha * next_log_prob
    return rewards + gamma * (~terminated) * soft_value


def critic_regression_loss(q: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_i 0.5 MSE(Q_i, y_i): q (n, B); targets (B,) shared by the critics or (n, B) one row per critic (the
    noise critic's distillation), without gradient."""
    return 0.5 * ((q - targets) ** 2).mean(dim=-1).sum()


def actor_loss(q: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """mean(alpha log pi(u | s) - min_i Q_i(s, u)), u ~ pi(s) reparameterized: q (n, B), log_prob (B,)."""
    return (alpha * log_prob - q.min(dim=0).values).mean()
