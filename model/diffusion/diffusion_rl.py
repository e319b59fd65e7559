"""The diffusion policy as an RL policy over the two-layer MDP (environment steps x denoising steps).

Only the last K' = `ft_denoising_steps` sampling steps are fine-tuned: they run
`actor_ft`, a trainable copy of the pre-trained denoiser; the earlier K - K'
steps run the frozen pre-trained `network`. Each fine-tuned step is a
Gaussian policy pi(x_{k-1} | x_k, s) = N(mean, std^2) whose log-probability is
evaluated with std clamped below at `min_logprob_denoising_std`, and which is
sampled with std at least `min_sampling_denoising_std` when exploring.
"""

import copy

import torch
from torch import nn

from model.diffusion.diffusion import DiffusionModel


class FinetuneDiffusion(DiffusionModel):
    """Diffusion policy with a frozen base network and a fine-tuned copy for the last K' steps."""

    def __init__(self, network: nn.Module, ft_denoising_steps: int, min_sampling_denoising_std: float = 0.1,
                 min_logprob_denoising_std: float = 0.1, **kwargs):
        super().__init__(network=network, min_sampling_denoising_std=min_sampling_denoising_std, **kwargs)
        if not 0 < ft_denoising_steps <= self.sampling_steps:
            raise ValueError(
                f"ft_denoising_steps ({ft_denoising_steps}) must be in 1..{self.sampling_steps} "
                f"(the number of {'DDIM' if self.use_ddim else 'denoising'} steps): lower ft_denoising_steps."
            )
        self.ft_denoising_steps = ft_denoising_steps
        self.min_logprob_denoising_std = min_logprob_denoising_std
        self.actor_ft = copy.deepcopy(self.network)
        self.network.requires_grad_(False)

    def denoiser_at(self, step_index: int) -> nn.Module:
        return self.actor_ft if step_index < self.ft_denoising_steps else self.network

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring chunks (B, Ta, Da) and {"chains": (B, K' + 1, Ta, Da)}, the chain of the K' fine-tuned steps."""
        sample = self.sample(cond, deterministic=False, chain_steps=self.ft_denoising_steps)
        return sample.actions, {"chains": sample.chains}

    def chain_log_probs(self, cond: dict, chains: torch.Tensor, network: nn.Module | None = None) -> torch.Tensor:
        """log pi(chain[:, j+1] | chain[:, j], s) of each fine-tuned step, element-wise.

        cond["state"]: (B, To, Do), chains: (B, K' + 1, Ta, Da) -> (B, K', Ta, Da),
        with j = 0 the noisiest fine-tuned step (step index K' - 1) and j = K' - 1 the one
        that outputs the action (step index 0). All K' steps go through the network as one batch.
        """
        batch, n_ft = chains.shape[0], self.ft_denoising_steps
        x_in = chains[:, :-1].reshape(batch * n_ft, self.horizon_steps, self.action_dim)
        x_out = chains[:, 1:].reshape(batch * n_ft, self.horizon_steps, self.action_dim)
        k = torch.arange(n_ft - 1, -1, -1, device=chains.device).repeat(batch)
        network = self.actor_ft if network is None else network
        features = network.encode(cond).repeat_interleave(n_ft, dim=0)  # each sample encoded once, not K' times
        mean, log_var = self.p_mean_var_from_features(x_in, k, features, network, deterministic=False)
        return self.step_log_probs(mean, log_var, x_out).view(batch, n_ft, self.horizon_steps, self.action_dim)

    def step_log_probs(self, mean: torch.Tensor, log_var: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        """Element-wise log N(x_out; mean, std^2) with std = exp(log_var / 2) clamped below at
        min_logprob_denoising_std; all three of one shape."""
        std = (0.5 * log_var).exp().clamp(min=self.min_logprob_denoising_std)
        return torch.distributions.Normal(mean, std, validate_args=False).log_prob(x_out)
