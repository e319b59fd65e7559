"""A flow policy made stochastic by learned noise injection, so that RL can fine-tune it (ReinFlow).

Each of the K Euler steps becomes a Gaussian step x_{k+1} ~ N(mu_k, sigma_k^2) with mu_k = x_k + v(x_k, t_k, s) dt
(clamped to +-`step_mean_clip` when set) and sigma_k from a small noise network in [sigma_min, sigma_max].
Every step then has an exact log-density. Two reductions of the chain's log-probability into one PPO term:

- "per_step" (this project's first variant, `ft_ppo_flow_mlp`): each step's element-wise log-density is clamped to
  [logprob_min, logprob_max] and averaged over the executed actions (`act_steps`) and the action dims, then
  the K steps are summed;
- "chain_mean" (ReinFlow's, `ft_reinflow_flow_mlp`): log N(x_0; 0, I) plus every step's log-density, summed over
  all Ta x Da elements and the K + 1 terms, divided by (K + 1) x Ta x Da, then clamped to [logprob_min, logprob_max].

The entropy term is the mean Gaussian entropy of the K noisy steps (it depends on the weights through sigma).
Evaluation integrates the flow without noise.
"""

import math

import torch
from torch import nn

from model.common.embedding import SinusoidalPosEmb
from model.common.mlp import make_mlp
from model.common.policy import FinetunePolicy
from model.flow.flow import FlowModel

LOG_PROB_REDUCTIONS = ("per_step", "chain_mean")
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)  # entropy of N(0, 1)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class NoiseNetwork(nn.Module):
    """sigma per chunk element, in [sigma_min, sigma_max] (log-space tanh squashing).

    Inputs: time features, the flattened observations and, when `use_x`, the flattened x_k. The time features are
    its own sinusoidal embedding of t, or with `velocity_time_features` the velocity network's learned time
    embedding, detached, which the policy passes in (ReinFlow's noise head: (s, t) only, plain Tanh MLP 64 x 2,
    default initialization). x: (B, Ta, Da), t: (B,) already scaled like the velocity network's,
    cond["state"]: (B, To, Do) -> (B, Ta, Da). With `zero_init` the output layer starts at zero, so every sigma
    starts at sqrt(sigma_min * sigma_max). `sigma_max` may be lowered during training (`set_sigma_max`).
    """

    def __init__(self, action_dim: int, horizon_steps: int, cond_dim: int, mlp_dims: list[int] = (128, 128, 128),
                 time_dim: int = 16, activation: str = "Mish", sigma_min: float = 0.08, sigma_max: float = 0.16,
                 use_x: bool = True, velocity_time_features: bool = False, residual: bool = True,
                 zero_init: bool = True):
        super().__init__()
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"NoiseNetwork needs 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}.")
        self.horizon_steps = horizon_steps
        self.action_dim = action_dim
        self.use_x = use_x
        self.velocity_time_features = velocity_time_features
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.time_embedding = None if velocity_time_features else SinusoidalPosEmb(time_dim)
        input_dim = time_dim + cond_dim + (horizon_steps * action_dim if use_x else 0)
        self.mlp = make_mlp(input_dim, mlp_dims, horizon_steps * action_dim, residual=residual, activation=activation)
        if zero_init:
            nn.init.zeros_(self.mlp.output_layer.weight)
            nn.init.zeros_(self.mlp.output_layer.bias)

    def set_sigma_max(self, sigma_max: float) -> None:
        if not self.sigma_min <= sigma_max:
            raise ValueError(f"sigma_max {sigma_max} is below sigma_min {self.sigma_min}.")
        self.sigma_max = sigma_max

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict,
                time_features: torch.Tensor | None = None) -> torch.Tensor:
        """time_features: (B, time_dim), required with `velocity_time_features`, else ignored."""
        batch = x.shape[0]
        time_features = time_features.detach() if self.velocity_time_features else self.time_embedding(t)
        inputs = [time_features, cond["state"].reshape(batch, -1)]
        if self.use_x:
            inputs.insert(0, x.reshape(batch, -1))
        squashed = (torch.tanh(self.mlp(torch.cat(inputs, dim=-1))) + 1) / 2
        low, high = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(low + (high - low) * squashed).view(batch, self.horizon_steps, self.action_dim)


class NoisyFlowPolicy(FlowModel, FinetunePolicy):
    """Flow policy + noise network: exact chain log-probabilities for PPO, a reparameterized sample for DQL.

    `sigma_max_schedule` (ReinFlow): {"hold_fraction": f, "final": s} keeps the noise network's sigma_max for the
    first fraction f of training, then cosine-decays it to s by the end (`set_training_progress`).
    """

    has_entropy = True

    def __init__(self, noise_network: NoiseNetwork, act_steps: int | None = None,
                 log_prob_reduction: str = "per_step", logprob_min: float = -5.0, logprob_max: float = 2.0,
                 step_mean_clip: float | None = None, sigma_max_schedule: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction={log_prob_reduction!r}: use one of {LOG_PROB_REDUCTIONS}.")
        self.noise_network = noise_network.to(self.device)
        self.act_steps = act_steps or self.horizon_steps
        self.log_prob_reduction = log_prob_reduction
        self.logprob_min = logprob_min
        self.logprob_max = logprob_max
        self.step_mean_clip = step_mean_clip
        self.initial_sigma_max = noise_network.sigma_max
        self.sigma_max_schedule = dict(sigma_max_schedule) if sigma_max_schedule else None

    @property
    def n_log_prob_terms(self) -> int:
        return 1

    def actor_parameters(self) -> list[nn.Parameter]:
        """The velocity network and the noise network."""
        return list(self.network.parameters()) + list(self.noise_network.parameters())

    def set_training_progress(self, fraction: float) -> None:
        """Apply the sigma_max schedule at `fraction` (0..1) of the run's iterations."""
        if self.sigma_max_schedule is None:
            return
        hold, final = self.sigma_max_schedule["hold_fraction"], self.sigma_max_schedule["final"]
        decay = min(max((fraction - hold) / (1 - hold), 0.0), 1.0) if hold < 1 else 0.0
        sigma_max = final + (self.initial_sigma_max - final) * 0.5 * (1 + math.cos(math.pi * decay))
        self.noise_network.set_sigma_max(sigma_max)

    def step_distribution(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean x + v dt (clamped to +-step_mean_clip when set) and std sigma of the noisy Euler step from x at
        times t: (B, Ta, Da) each."""
        mean = x + self.velocity(x, t, cond) / self.inference_steps
        if self.step_mean_clip is not None:
            mean = mean.clamp(-self.step_mean_clip, self.step_mean_clip)
        time_features = None
        if self.noise_network.velocity_time_features:
            time_features = self.network.time_embedding(t * self.time_scale)
        return mean, self.noise_network(x, t * self.time_scale, cond, time_features)

    def noisy_chain(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A noisy Euler chain from clipped noise: (chains (B, K + 1, Ta, Da), element-wise step log-densities
        (B, K, Ta, Da), stds (B, K, Ta, Da)); differentiable when grad is enabled (reparameterized draws).

        The last entry is clipped to +-final_action_clip_value when set (ReinFlow), and its log-density is that
        of the clipped value, the action the chain stores and the env runs.
        """
        batch = cond["state"].shape[0]
        x = self.initial_noise(batch)
        chain, log_probs, stds = [x], [], []
        for k, t in enumerate(self.times()):
            mean, std = self.step_distribution(x, torch.full((batch,), t, device=self.device), cond)
            noise = torch.randn_like(x).clamp(-self.randn_clip_value, self.randn_clip_value)
            x = mean + std * noise
            if k == self.inference_steps - 1:
                x = self.clip_final(x)
            chain.append(x)
            log_probs.append(torch.distributions.Normal(mean, std, validate_args=False).log_prob(x))
            stds.append(std)
        return torch.stack(chain, dim=1), torch.stack(log_probs, dim=1), torch.stack(stds, dim=1)

    @torch.no_grad()
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Noisy chains: actions (B, Ta, Da) (the last chain entry, clipped by final_action_clip_value) and
        {"chains": (B, K + 1, Ta, Da) with x_0 first, "log_probs": (B, 1), equal to `log_probs`}."""
        chains, step_log_probs, _ = self.noisy_chain(cond)
        log_probs = self.chain_log_prob(chains[:, 0], step_log_probs)
        return chains[:, -1], {"chains": chains, "log_probs": log_probs}

    def sample_differentiable(self, cond: dict) -> torch.Tensor:
        """Exploring chunks (B, Ta, Da) with the graph through the velocity and noise networks."""
        return self.noisy_chain(cond)[0][:, -1]

    def step_log_probs(self, cond: dict, chains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Element-wise log N(x_{k+1}; mean_k, sigma_k^2) of each step and the stds: (B, K, Ta, Da) each.

        All K steps go through the networks as one batch.
        """
        batch, n_steps = chains.shape[0], self.inference_steps
        shape = (batch * n_steps, self.horizon_steps, self.action_dim)
        x_in, x_out = chains[:, :-1].reshape(shape), chains[:, 1:].reshape(shape)
        t = torch.tensor(self.times(), device=chains.device).repeat(batch)
        cond_rep = {key: value.repeat_interleave(n_steps, dim=0) for key, value in cond.items()}
        mean, std = self.step_distribution(x_in, t, cond_rep)
        log_prob = torch.distributions.Normal(mean, std, validate_args=False).log_prob(x_out)
        return log_prob.view(batch, n_steps, *shape[1:]), std.view(batch, n_steps, *shape[1:])

    def chain_log_prob(self, x0: torch.Tensor, step_log_probs: torch.Tensor) -> torch.Tensor:
        """x0 (B, Ta, Da) and (B, K, Ta, Da) element-wise step log-densities -> (B, 1), reduced as configured."""
        if self.log_prob_reduction == "per_step":
            log_prob = step_log_probs.clamp(self.logprob_min, self.logprob_max)[:, :, : self.act_steps]
            return log_prob.mean(dim=(-2, -1)).sum(dim=1, keepdim=True)
        prior = -0.5 * x0**2 - HALF_LOG_2PI  # log N(x0; 0, I), element-wise
        total = prior.sum(dim=(-2, -1)) + step_log_probs.sum(dim=(1, 2, 3))
        n_terms = (self.inference_steps + 1) * self.horizon_steps * self.action_dim
        return (total / n_terms).clamp(self.logprob_min, self.logprob_max)[:, None]

    def log_probs_and_entropy(self, cond: dict, stored: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1) log-probability of each stored chain (B, K + 1, Ta, Da) and its entropy (B,): "per_step", the
        mean entropy of the K noisy steps' elements; "chain_mean" (ReinFlow), that of the K + 1 terms x_0 (unit
        normal) and the steps, per element, the normalization of its log-probability."""
        chains = stored["chains"]
        step_log_probs, std = self.step_log_probs(cond, chains)
        step_entropy = HALF_LOG_2PI_E + std.log()  # (B, K, Ta, Da)
        if self.log_prob_reduction == "per_step":
            entropy = step_entropy.mean(dim=(1, 2, 3))
        else:
            entropy = (HALF_LOG_2PI_E + step_entropy.sum(dim=1).mean(dim=(-2, -1))) / (self.inference_steps + 1)
        return self.chain_log_prob(chains[:, 0], step_log_probs), entropy
