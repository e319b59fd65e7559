"""DDPM / DDIM core: forward process, posterior, sampling with chains, and the behaviour-cloning loss.

Actions are chunks x: (B, Ta, Da) normalized to [-1, 1]; observations come as
cond["state"]: (B, To, Do). "Step index" k counts the sampling schedule from
the noisiest step S - 1 down to 0, where S = denoising_steps (DDPM) or
ddim_steps (DDIM); the DDPM step of index k is `timesteps[k]`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from model.common.policy import ChunkPolicy, Sample
from model.diffusion.schedules import cosine_beta_schedule, ddim_timesteps

LOG_VARIANCE_FLOOR = 1e-20
EVAL_MIN_STD = 1e-3


class DiffusionModel(ChunkPolicy):
    """Diffusion policy over action chunks with a cosine schedule and epsilon (or x0) prediction.

    `network_path` (a pre-training checkpoint or shipped policy file) initializes the denoiser,
    as every fine-tuning model does.
    """

    def __init__(self, network: nn.Module, horizon_steps: int, obs_dim: int, action_dim: int, cond_steps: int = 1,
                 denoising_steps: int = 20, predict_epsilon: bool = True, denoised_clip_value: float | None = 1.0,
                 final_action_clip_value: float | None = 1.0, randn_clip_value: float = 10.0,
                 min_sampling_denoising_std: float = 0.0, use_ddim: bool = False, ddim_steps: int | None = None,
                 ddim_eta: float = 1.0, network_path: str | None = None, device: str = "cpu"):
        super().__init__(network, horizon_steps, obs_dim, action_dim, cond_steps, randn_clip_value,
                         final_action_clip_value, network_path)
        self.denoising_steps = denoising_steps
        self.predict_epsilon = predict_epsilon
        self.denoised_clip_value = denoised_clip_value
        self.min_sampling_denoising_std = min_sampling_denoising_std
        self.use_ddim = use_ddim
        self.ddim_eta = ddim_eta
        if use_ddim and ddim_steps is None:
            raise ValueError("use_ddim=true needs ddim_steps (e.g. ddim_steps=5).")
        self.sampling_steps = ddim_steps if use_ddim else denoising_steps

        betas = cosine_beta_schedule(denoising_steps)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_variance.clamp(min=LOG_VARIANCE_FLOOR).log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        if use_ddim:
            steps = ddim_timesteps(denoising_steps, ddim_steps)
            ddim_alphas = alphas_cumprod[steps]
            buffers["ddim_alphas"] = ddim_alphas
            buffers["ddim_alphas_prev"] = torch.cat([torch.ones(1, dtype=torch.float64), ddim_alphas[:-1]])
            buffers["timesteps"] = steps
        else:
            buffers["timesteps"] = torch.arange(denoising_steps, dtype=torch.long)
        for name, value in buffers.items():
            self.register_buffer(name, value if name == "timesteps" else value.float(), persistent=False)
        self.timestep_values = buffers["timesteps"].tolist()  # the DDPM step of each step index, as ints
        self.to(device)

    # ---- forward process and training loss -------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; x0, noise: (B, Ta, Da), t: (B,)."""
        return (_per_sample(self.sqrt_alphas_cumprod, t) * x0
                + _per_sample(self.sqrt_one_minus_alphas_cumprod, t) * noise)

    def per_sample_bc_loss(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        """The DDPM loss of each chunk: MSE of the predicted noise (or x0) at a uniformly drawn step, averaged over
        its Ta x Da elements: (B, Ta, Da) -> (B,). Weighted-regression fine-tuning (DRWR, DAWR) weighs these terms.
        """
        t = torch.randint(0, self.denoising_steps, (actions.shape[0],), device=actions.device)
        noise = torch.randn_like(actions)
        x_t = self.q_sample(actions, t, noise)
        prediction = self.bc_network(x_t, t, cond)
        target = noise if self.predict_epsilon else actions
        return F.mse_loss(prediction, target, reduction="none").mean(dim=(-2, -1))

    @property
    def bc_network(self) -> nn.Module:
        """The denoiser that behaviour cloning trains (fine-tuning models train their copy)."""
        return self.network

    # ---- reverse process --------------------------------------------------------------------
    def denoiser_at(self, step_index: int) -> nn.Module:
        """The network that runs sampling step `step_index` (fine-tuning models override this)."""
        return self.network

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0); t: (B,) DDPM steps or one int for every row."""
        mean = _per_sample(self.posterior_mean_coef1, t) * x0 + _per_sample(self.posterior_mean_coef2, t) * x_t
        return mean, _per_sample(self.posterior_log_variance_clipped, t).expand_as(x_t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, prediction: torch.Tensor) -> torch.Tensor:
        """x0 from the network output; clipped to +-denoised_clip_value. t: (B,) DDPM steps or one int."""
        if self.predict_epsilon:
            x0 = (_per_sample(self.sqrt_recip_alphas_cumprod, t) * x_t
                  - _per_sample(self.sqrt_recipm1_alphas_cumprod, t) * prediction)
        else:
            x0 = prediction
        if self.denoised_clip_value is not None:
            x0 = x0.clamp(-self.denoised_clip_value, self.denoised_clip_value)
        return x0

    def p_mean_var(self, x: torch.Tensor, k: torch.Tensor | int, cond: dict, network: nn.Module,
                   deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{k-1} | x_k, s) at step indices k: (B,) or one int for every row.
        x: (B, Ta, Da).

        DDPM: the posterior q(x_{t-1} | x_t, x0_hat). DDIM: x0_hat and the noise re-derived
        from the clipped x0_hat, with sigma from eta (ddim_eta when exploring, 0 when deterministic).
        """
        return self.p_mean_var_from_features(x, k, network.encode(cond), network, deterministic)

    def p_mean_var_from_features(self, x: torch.Tensor, k: torch.Tensor | int, features: torch.Tensor,
                                 network: nn.Module, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`p_mean_var` with the observations already encoded, features = network.encode(cond): (B, F).

        The sampler encodes once per chunk and passes each step as an int, so the schedule's coefficients
        are 0-dim values and the network embeds the step once instead of once per row.
        """
        t_network = self.timesteps[k]  # 0-dim for an int k, else (B,)
        t = self.timestep_values[k] if isinstance(k, int) else t_network  # the schedule's index: int or (B,)
        x0 = self.predict_x0(x, t, network.denoise(x, t_network, features))
        if not self.use_ddim:
            return self.q_posterior(x0, x, t)
        alpha = _per_sample(self.ddim_alphas, k)
        alpha_prev = _per_sample(self.ddim_alphas_prev, k)
        eps = (x - alpha.sqrt() * x0) / (1.0 - alpha).sqrt()
        eta = 0.0 if deterministic else self.ddim_eta
        sigma = (eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)).sqrt()).clamp(min=1e-10)
        mean = alpha_prev.sqrt() * x0 + (1.0 - alpha_prev - sigma**2).clamp(min=0).sqrt() * eps
        return mean, (sigma**2).log().expand_as(x)

    def sampling_std(self, log_var: torch.Tensor, k: int, deterministic: bool) -> torch.Tensor:
        """Std actually used to sample step index k.

        Exploring: raised to at least `min_sampling_denoising_std`. Deterministic: DDIM
        is noise-free; DDPM keeps the posterior std (>= 1e-3) except at the last step (k = 0).
        """
        std = (0.5 * log_var).exp()
        if not deterministic:
            return std.clamp(min=self.min_sampling_denoising_std)
        if self.use_ddim or k == 0:
            return torch.zeros_like(std)
        return std.clamp(min=EVAL_MIN_STD)

    def sample(self, cond: dict, deterministic: bool = False, chain_steps: int = 0,
               network: nn.Module | None = None, requires_grad: bool = False,
               noise: torch.Tensor | None = None) -> Sample:
        """Draw action chunks for cond["state"]: (B, To, Do).

        `network` runs every step when given (default: `denoiser_at(k)` for step index k).
        `requires_grad=True` keeps the graph through every denoising step, so a loss on the
        actions reaches the denoiser's weights (DQL's actor loss); otherwise no graph is built.

        chain_steps = C > 0 also returns the chain of the last C steps: (B, C + 1, Ta, Da),
        the input of the first of them followed by the output of each (the last entry is the action).
        `noise` (B, Ta, Da) is the chain's first sample x_S (default: a fresh unit-normal draw, unclipped); with
        DDIM and `deterministic` it alone decides the chunk. The unit-normal draws of the later steps are clipped
        to +-randn_clip_value; the final chunk to +-final_action_clip_value.
        """
        if not 0 <= chain_steps <= self.sampling_steps:
            raise ValueError(f"chain_steps must be in 0..{self.sampling_steps}, got {chain_steps}.")
        with torch.set_grad_enabled(requires_grad):
            return self._sample(cond, deterministic, chain_steps, network, noise)

    def _sample(self, cond: dict, deterministic: bool, chain_steps: int, network: nn.Module | None,
                noise: torch.Tensor | None) -> Sample:
        batch = cond["state"].shape[0]
        x = noise
        if x is None:
            x = torch.randn(batch, self.horizon_steps, self.action_dim, device=cond["state"].device)
        chain, means, log_vars = [], [], []
        features = {}  # each denoiser encodes the observations once per chunk
        for k in reversed(range(self.sampling_steps)):
            if k == chain_steps - 1:
                chain.append(x)
            denoiser = self.denoiser_at(k) if network is None else network
            if denoiser not in features:
                features[denoiser] = denoiser.encode(cond)
            mean, log_var = self.p_mean_var_from_features(x, k, features[denoiser], denoiser, deterministic)
            std = self.sampling_std(log_var, k, deterministic)
            x = mean + std * torch.randn_like(x).clamp(-self.randn_clip_value, self.randn_clip_value)
            if k == 0:
                x = self.clip_final(x)
            if k < chain_steps:
                chain.append(x)
                means.append(mean)
                log_vars.append(log_var)
        if chain_steps == 0:
            return Sample(actions=x)
        return Sample(actions=x, chains=torch.stack(chain, dim=1), chain_means=torch.stack(means, dim=1),
                      chain_log_vars=torch.stack(log_vars, dim=1))

    # ---- acting in an environment (the surface every fine-tuning agent calls) ---------------
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring action chunks (B, Ta, Da) and what the rollout stores per step beside them (nothing here)."""
        return self.sample(cond, deterministic=False).actions, {}

    decodes_noise = True

    def act(self, cond: dict, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic action chunks (B, Ta, Da) for evaluation, from the initial noise (B, Ta, Da) when given
        (DDIM: a function of it; DDPM keeps its small evaluation std at the later steps)."""
        return self.sample(cond, deterministic=True, noise=noise).actions


def _per_sample(values: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
    """values[index] shaped to broadcast over (B, Ta, Da): (B, 1, 1) for (B,) indices, 0-dim for an int index."""
    if isinstance(index, int):
        return values[index]
    return values[index].view(-1, 1, 1)
