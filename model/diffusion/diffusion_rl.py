"""The diffusion policy as an RL policy over the two-layer MDP (environment steps x denoising steps).

Only the last K' = `ft_denoising_steps` sampling steps are fine-tuned: they run
`actor_ft`, a trainable copy of the pre-trained denoiser; the earlier K - K'
steps run the frozen pre-trained `network`. Each fine-tuned step is a
Gaussian policy pi(x_{k-1} | x_k, s) = N(mean, std^2) whose log-probability is
evaluated with std clamped below at `min_logprob_denoising_std`, and which is
sampled with std at least `min_sampling_denoising_std` when exploring.
"""

import copy
import os

import torch
from torch import nn

from dppo.checkpoint import load_checkpoint, load_state_dict_checked
from model.diffusion.diffusion import DiffusionModel


class FinetuneDiffusion(DiffusionModel):
    """Diffusion policy with a frozen base network and a fine-tuned copy for the last K' steps."""

    def __init__(self, network: nn.Module, ft_denoising_steps: int, network_path: str | None = None,
                 min_sampling_denoising_std: float = 0.1, min_logprob_denoising_std: float = 0.1, **kwargs):
        super().__init__(network=network, min_sampling_denoising_std=min_sampling_denoising_std, **kwargs)
        if not 0 < ft_denoising_steps <= self.sampling_steps:
            raise ValueError(
                f"ft_denoising_steps ({ft_denoising_steps}) must be in 1..{self.sampling_steps} "
                f"(the number of {'DDIM' if self.use_ddim else 'denoising'} steps): lower ft_denoising_steps."
            )
        self.ft_denoising_steps = ft_denoising_steps
        self.min_logprob_denoising_std = min_logprob_denoising_std
        if network_path is not None:
            load_state_dict_checked(self.network, pretrained_network_state(network_path), what=network_path)
        self.actor_ft = copy.deepcopy(self.network)
        self.network.requires_grad_(False)

    def denoiser_at(self, step_index: int) -> nn.Module:
        return self.actor_ft if step_index < self.ft_denoising_steps else self.network

    def sample_with_chains(self, cond: dict, deterministic: bool = False):
        """Sample with the chain of the K' fine-tuned steps: chains (B, K' + 1, Ta, Da)."""
        return self.sample(cond, deterministic=deterministic, chain_steps=self.ft_denoising_steps)

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
        cond_rep = {key: value.repeat_interleave(n_ft, dim=0) for key, value in cond.items()}
        network = self.actor_ft if network is None else network
        mean, log_var = self.p_mean_var(x_in, k, cond_rep, network, deterministic=False)
        std = (0.5 * log_var).exp().clamp(min=self.min_logprob_denoising_std)
        log_prob = torch.distributions.Normal(mean, std).log_prob(x_out)
        return log_prob.view(batch, n_ft, self.horizon_steps, self.action_dim)


def pretrained_network_state(path: str) -> dict:
    """Denoiser weights of a pre-training checkpoint: its EMA weights, or `network` of a shipped policy file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Pre-trained policy {path} not found: make it with `python script/run.py --config-name=pre_diffusion_mlp "
            f"task=<task> export_policy_path={path}`, or set base_policy_path."
        )
    weights = denoiser_weights(load_checkpoint(path))
    if weights is not None:
        return weights
    raise ValueError(f"Checkpoint {path} holds neither 'ema' nor 'network' weights: point base_policy_path to a "
                     "checkpoint written by pre-training (checkpoint/state_<epoch>.pt or policy.pt).")


def denoiser_weights(state: dict) -> dict | None:
    """The denoiser weights a pre-training checkpoint carries (`ema` of a state, `network` of a policy file), else None."""
    for key in ("ema", "network"):
        if key in state:
            return state[key]
    return None
