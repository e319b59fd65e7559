"""The diffusion policy as an RL policy over the two-layer MDP (environment steps x denoising steps).

Only the last K' = `ft_denoising_steps` sampling steps are fine-tuned: they run
`actor_ft`, a trainable copy of the pre-trained denoiser; the earlier K - K'
steps run the frozen pre-trained `network`. Each fine-tuned step is a
Gaussian policy pi(x_{k-1} | x_k, s) = N(mean, std^2) whose log-probability is
evaluated with std clamped below at `min_logprob_denoising_std`, and which is
sampled with std at least `min_sampling_denoising_std` when exploring.
DPPO fine-tunes the last K' = 10 of K = 20 steps; the baselines (DRWR, DAWR, DQL,
IDQL) fine-tune all of them (`ft_denoising_steps` = null).

For PPO each fine-tuned step is one log-probability term: element-wise log-densities
clamped to [logprob_min, logprob_max], then averaged over the first `act_steps`
actions of the chunk (the executed ones) and the action dims.
"""

import copy

import torch
from torch import nn

from model.common.policy import FinetunePolicy
from model.diffusion.diffusion import DiffusionModel


class FinetuneDiffusion(DiffusionModel, FinetunePolicy):
    """Diffusion policy with a frozen base network and a fine-tuned copy for the last K' steps."""

    def __init__(self, network: nn.Module, ft_denoising_steps: int | None = None,
                 min_sampling_denoising_std: float = 0.1, min_logprob_denoising_std: float = 0.1,
                 act_steps: int | None = None, logprob_min: float = -5.0, logprob_max: float = 2.0,
                 randn_clip_value: float = 3.0, final_action_clip_value: float | None = None, **kwargs):
        """Fine-tuning's own defaults, those of the reference's fine-tuning configs: each draw of the chain's noise
        clipped at 3 (pre-training's sampler: 10), and no clip of the final action (the env's bounds apply)."""
        super().__init__(network=network, min_sampling_denoising_std=min_sampling_denoising_std,
                         randn_clip_value=randn_clip_value, final_action_clip_value=final_action_clip_value, **kwargs)
        ft_denoising_steps = self.sampling_steps if ft_denoising_steps is None else ft_denoising_steps
        if not 0 < ft_denoising_steps <= self.sampling_steps:
            raise ValueError(
                f"ft_denoising_steps ({ft_denoising_steps}) must be in 1..{self.sampling_steps} "
                f"(the number of {'DDIM' if self.use_ddim else 'denoising'} steps): lower ft_denoising_steps."
            )
        if act_steps is not None and not 0 < act_steps <= self.horizon_steps:
            raise ValueError(f"act_steps={act_steps} must be in 1..horizon_steps ({self.horizon_steps}): lower it.")
        self.ft_denoising_steps = ft_denoising_steps
        self.min_logprob_denoising_std = min_logprob_denoising_std
        self.act_steps = act_steps or self.horizon_steps
        self.logprob_min = logprob_min
        self.logprob_max = logprob_max
        self.actor_ft = copy.deepcopy(self.network)
        self.network.requires_grad_(False)

    @property
    def n_log_prob_terms(self) -> int:
        return self.ft_denoising_steps

    @property
    def bc_network(self) -> nn.Module:
        return self.actor_ft

    def actor_parameters(self) -> list[nn.Parameter]:
        """What fine-tuning trains: the copy of the denoiser that runs the last K' steps."""
        return list(self.actor_ft.parameters())

    def denoiser_at(self, step_index: int) -> nn.Module:
        return self.actor_ft if step_index < self.ft_denoising_steps else self.network

    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring chunks (B, Ta, Da) and {"chains": (B, K' + 1, Ta, Da), "log_probs": (B, K')}.

        The log-probabilities of the chain come from the means and variances the sampler already computed, so
        the update need not run the K' steps again for them; they equal `log_probs(cond, stored)` (tested).
        """
        sample = self.sample(cond, deterministic=False, chain_steps=self.ft_denoising_steps)
        step_log_probs = self.step_log_probs(sample.chain_means, sample.chain_log_vars, sample.chains[:, 1:])
        return sample.actions, {"chains": sample.chains, "log_probs": self.reduce_log_probs(step_log_probs)}

    def explore_actions(self, cond: dict) -> torch.Tensor:
        """Exploring chunks (B, Ta, Da) without the chain and its log-probabilities."""
        return self.sample(cond, deterministic=False).actions

    def sample_differentiable(self, cond: dict) -> torch.Tensor:
        """Exploring chunks (B, Ta, Da) with the graph through every fine-tuned denoising step."""
        return self.sample(cond, deterministic=False, requires_grad=True).actions

    def log_probs_and_entropy(self, cond: dict, stored: dict) -> tuple[torch.Tensor, None]:
        """(B, K') reduced log-probabilities of stored["chains"] (B, K' + 1, Ta, Da); no entropy term, as each
        step's std comes from the noise schedule, not from the weights."""
        return self.reduce_log_probs(self.chain_log_probs(cond, stored["chains"])), None

    def bc_reference_log_probs(self, cond: dict) -> torch.Tensor:
        """(B, K') reduced log-probabilities under `actor_ft` of chains the frozen pre-trained denoiser draws."""
        base_chains = self.sample(cond, deterministic=False, chain_steps=self.ft_denoising_steps,
                                  network=self.network).chains
        return self.reduce_log_probs(self.chain_log_probs(cond, base_chains))

    def reduce_log_probs(self, log_prob: torch.Tensor) -> torch.Tensor:
        """(B, K', Ta, Da) element-wise log-probabilities -> (B, K'): clamp, mean over executed actions and dims."""
        log_prob = log_prob.clamp(self.logprob_min, self.logprob_max)
        return log_prob[:, :, : self.act_steps].mean(dim=(-2, -1))

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
