"""DiffusionUNet1D: Diffusion Policy's temporal convolution U-Net, the denoiser of the paper's robomimic UNet runs."""

import einops
import torch
from torch import nn

from model.common.embedding import embed_distinct_steps, time_embedding_mlp
from model.common.obs_encoder import obs_encoder_or_flatten


class Conv1dBlock(nn.Module):
    """Conv1d (same padding) -> GroupNorm -> Mish.

    x: (B, in_channels, Ta) -> (B, out_channels, Ta)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class FiLMResidualBlock1D(nn.Module):
    """Two Conv1dBlocks; between them the features are modulated by the conditioning vector (FiLM), plus a skip.

    With `cond_predict_scale` the conditioning predicts a per-channel scale and bias (h * scale + bias),
    otherwise only a bias. The conditioning encoder is Mish -> Linear when `smaller_encoder`,
    else a three-layer MLP Linear -> Mish -> Linear -> Mish -> Linear.

    x: (B, in_channels, T), cond: (B, cond_dim) -> (B, out_channels, T)
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int,
                 cond_predict_scale: bool, smaller_encoder: bool):
        super().__init__()
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        self.conv1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        film_dim = 2 * out_channels if cond_predict_scale else out_channels
        if smaller_encoder:
            self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        else:
            self.cond_encoder = nn.Sequential(
                nn.Linear(cond_dim, film_dim),
                nn.Mish(),
                nn.Linear(film_dim, film_dim),
                nn.Mish(),
                nn.Linear(film_dim, film_dim),
            )
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        film = self.cond_encoder(cond)
        if self.cond_predict_scale:
            scale, bias = einops.rearrange(film, "b (k c) -> k b c 1", k=2)
            h = h * scale + bias
        else:
            h = h + film[:, :, None]
        return self.conv2(h) + self.residual_conv(x)


class DiffusionUNet1D(nn.Module):
    """Predicts the noise (or the clean chunk) with convolutions over the chunk's time axis.

    The chunk is treated as a 1-D signal of Ta steps with Da channels. Every residual block is FiLM-conditioned
    on the global vector [time embedding (time_dim), obs features (cond_dim)]; the time embedding is
    sinusoidal(time_dim) -> Linear(time_dim, 4*time_dim) -> Mish -> Linear(4*time_dim, time_dim).

    Channels go Da -> dim*dim_mults[0] -> ... -> dim*dim_mults[-1]. Down path: per level two residual
    blocks, then a stride-2 conv except at the last level; two mid blocks; up path: per level below the
    last, concatenate the skip of the matching down level, two residual blocks, then a transposed conv
    that doubles the length. As in Diffusion Policy, the skip of the first (full-length) down level is
    not used. Finally Conv1dBlock -> 1x1 conv to Da channels.

    The obs features are obs_encoder(cond) (B, obs_encoder.out_dim) when an encoder is given, else the
    flattened cond["state"] (B, To*Do), which must have cond_dim features.

    x: (B, Ta, Da), t: (B,), cond["state"]: (B, To, Do) [+ what obs_encoder reads] -> (B, Ta, Da)
    """

    def __init__(self, action_dim: int, horizon_steps: int, cond_dim: int | None, time_dim: int = 16, dim: int = 64,
                 dim_mults: list[int] = (1, 2), kernel_size: int = 5, n_groups: int = 8,
                 cond_predict_scale: bool = True, smaller_encoder: bool = False, obs_encoder: nn.Module | None = None):
        super().__init__()
        n_downsamples = len(dim_mults) - 1
        if horizon_steps % 2**n_downsamples != 0:
            raise ValueError(
                f"DiffusionUNet1D with {len(dim_mults)} levels halves the chunk {n_downsamples} times: "
                f"horizon_steps={horizon_steps} must be a multiple of {2**n_downsamples} (or use fewer dim_mults)."
            )
        obs_encoder = obs_encoder_or_flatten(cond_dim, obs_encoder, "DiffusionUNet1D")
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.obs_encoder = obs_encoder
        self.time_embedding = time_embedding_mlp(time_dim, hidden_mult=4)
        global_dim = time_dim + obs_encoder.out_dim

        def block(d_in: int, d_out: int) -> FiLMResidualBlock1D:
            return FiLMResidualBlock1D(d_in, d_out, global_dim, kernel_size, n_groups, cond_predict_scale,
                                       smaller_encoder)

        dims = [action_dim, *(dim * m for m in dim_mults)]
        levels = list(zip(dims[:-1], dims[1:]))
        self.down_levels = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(levels):
            downsample = nn.Conv1d(d_out, d_out, 3, stride=2, padding=1) if i < n_downsamples else nn.Identity()
            self.down_levels.append(nn.ModuleList([block(d_in, d_out), block(d_out, d_out), downsample]))
        self.mid_blocks = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        self.up_levels = nn.ModuleList()
        for d_in, d_out in reversed(levels[1:]):
            upsample = nn.ConvTranspose1d(d_in, d_in, 4, stride=2, padding=1)
            self.up_levels.append(nn.ModuleList([block(2 * d_out, d_in), block(d_in, d_in), upsample]))
        self.final_conv = nn.Sequential(
            Conv1dBlock(dims[1], dims[1], kernel_size, n_groups),
            nn.Conv1d(dims[1], action_dim, 1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.denoise(x, t, self.encode(cond))

    def encode(self, cond: dict) -> torch.Tensor:
        """Observation features (B, F): computed once per chunk by the sampler, whatever the number of steps."""
        return self.obs_encoder(cond)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """x: (B, Ta, Da), t: (B,) steps or a 0-dim step shared by every row, features: (B, F) -> (B, Ta, Da)."""
        time_features = embed_distinct_steps(self.time_embedding, t.view(-1)).expand(x.shape[0], -1)
        global_cond = torch.cat([time_features, features], dim=-1)
        h = einops.rearrange(x, "b t a -> b a t")
        skips = []
        for res1, res2, downsample in self.down_levels:
            h = res2(res1(h, global_cond), global_cond)
            skips.append(h)
            h = downsample(h)
        for mid in self.mid_blocks:
            h = mid(h, global_cond)
        for res1, res2, upsample in self.up_levels:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, global_cond), global_cond))
        return einops.rearrange(self.final_conv(h), "b a t -> b t a")
