"""Observation encoders: cond dict -> (B, out_dim) features for denoisers and critics.

FlattenState reads proprioception only; ViTObsEncoder adds camera images (the paper's pixel experiments,
after IBRL's ViT: conv patch embedding, one pre-norm transformer layer, a spatial-embedding readout per view).
"""

import einops
import torch
from torch import nn
from torch.nn import functional as F

PIXEL_MAX = 255.0
VIT_INIT_STD = 0.02


class FlattenState(nn.Module):
    """The observation history flattened: cond["state"]: (B, To, Do) -> (B, To*Do); out_dim = cond_steps * state_dim."""

    def __init__(self, state_dim: int, cond_steps: int):
        super().__init__()
        self.out_dim = state_dim * cond_steps

    def forward(self, cond: dict) -> torch.Tensor:
        state = cond["state"]
        state = state.reshape(state.shape[0], -1)
        if state.shape[1] != self.out_dim:
            raise ValueError(
                f"Expected cond_steps * obs_dim = {self.out_dim} observation features, got {state.shape[1]}:"
                " match obs_dim/cond_steps in the config to the data."
            )
        return state


def obs_encoder_or_flatten(cond_dim: int | None, obs_encoder: nn.Module | None, owner: str) -> nn.Module:
    """The encoder a network reads observations with: `obs_encoder` when given (its out_dim must equal cond_dim
    when cond_dim is set), else FlattenState over cond_dim state features. `owner` names the network in errors."""
    if obs_encoder is None and cond_dim is None:
        raise ValueError(f"{owner} needs cond_dim (To * Do state features) or an obs_encoder.")
    if obs_encoder is None:
        return FlattenState(cond_dim, 1)
    if cond_dim is not None and cond_dim != obs_encoder.out_dim:
        raise ValueError(
            f"{owner} got cond_dim={cond_dim} but its obs_encoder gives {obs_encoder.out_dim} features:"
            " leave cond_dim unset (null) or set it to obs_encoder.out_dim."
        )
    return obs_encoder


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Translates each image by its own random integer offset in [-pad, pad] on both axes, edges replicated.

    Pads by `pad` pixels (replicate) and crops back to the original size at a uniformly drawn corner
    (DrQ's random-shift augmentation, exact integer version).

    images: (N, C, H, W) float -> (N, C, H, W)
    """
    n, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    corners = torch.randint(0, 2 * pad + 1, (n, 2), device=images.device)
    rows = corners[:, :1] + torch.arange(height, device=images.device)
    cols = corners[:, 1:] + torch.arange(width, device=images.device)
    batch = torch.arange(n, device=images.device)
    cropped = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return einops.rearrange(cropped, "n h w c -> n c h w")


SHIFT_CHUNK = 4096  # images shifted at a time by shift_images (bounds the float copy's memory)


def shift_images(rgb: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> each translated by its own random integer offset in [-pad, pad]
    (`random_shift`), still uint8 (an integer translation keeps pixel values exact).

    Fine-tuning shifts a rollout's images once, so that its old and new log-probabilities see the same images.
    """
    flat = rgb.reshape(-1, *rgb.shape[-3:])
    shifted = [random_shift(chunk.float(), pad).to(torch.uint8) for chunk in flat.split(SHIFT_CHUNK)]
    return torch.cat(shifted).reshape(rgb.shape)


class ConvPatchEmbedding(nn.Module):
    """Conv(k=patch_size, stride=patch_size//2) -> [GroupNorm] -> ReLU -> Conv(k=3, stride=2), flattened to tokens.

    A 96 x 96 image with patch_size 8 gives a 23 x 23 then an 11 x 11 grid: 121 tokens.

    images: (N, C, H, W) -> tokens: (N, num_tokens, embed_dim)
    """

    def __init__(self, in_channels: int, image_size: int, patch_size: int, embed_dim: int, use_norm: bool):
        super().__init__()
        stride = patch_size // 2
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=stride),
            nn.GroupNorm(embed_dim, embed_dim) if use_norm else nn.Identity(),
            nn.ReLU(),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=3, stride=2),
        )
        side = ((image_size - patch_size) // stride + 1 - 3) // 2 + 1
        self.num_tokens = side * side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return einops.rearrange(self.layers(images), "n d h w -> n (h w) d")


class ViTBackbone(nn.Module):
    """Pixels in [0, 255] -> tokens: scale to [-0.5, 0.5], patch embedding, learned positional embedding,
    `depth` pre-norm transformer layers (attention + GELU MLP of 4*embed_dim), final LayerNorm.

    images: (N, C, H, W) float -> tokens: (N, num_tokens, embed_dim)
    """

    def __init__(self, in_channels: int, image_size: int, patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, embed_norm: bool):
        super().__init__()
        self.patch_embedding = ConvPatchEmbedding(in_channels, image_size, patch_size, embed_dim, embed_norm)
        self.num_tokens = self.patch_embedding.num_tokens
        self.pos_embedding = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))
        self.layers = nn.Sequential(*[
            nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=4 * embed_dim, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT init as IBRL uses it: truncated normal(0.02) for the positional embedding and every linear
        weight (attention in-projection included), zero biases; convolutions keep PyTorch's default."""
        nn.init.trunc_normal_(self.pos_embedding, std=VIT_INIT_STD)
        for module in self.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=VIT_INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=VIT_INIT_STD)
                nn.init.zeros_(module.in_proj_bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embedding(images / PIXEL_MAX - 0.5) + self.pos_embedding
        return self.norm(self.layers(tokens))


class SpatialEmbedding(nn.Module):
    """IBRL's spatial-embedding readout: compresses a token grid to `proj_dim` features.

    Each of the embed_dim channels is read as a vector over the tokens, concatenated with the proprioception,
    and projected to proj_dim (Linear -> LayerNorm -> ReLU); a learned (embed_dim, proj_dim) weight then
    sums the channels: z_j = sum_c w_cj y_cj. Dropout on the result.

    tokens: (B, num_tokens, embed_dim), state: (B, state_features) -> (B, proj_dim)
    """

    def __init__(self, num_tokens: int, embed_dim: int, state_features: int, proj_dim: int, dropout: float):
        super().__init__()
        self.input_proj = nn.Sequential(
            nn.Linear(num_tokens + state_features, proj_dim),
            nn.LayerNorm(proj_dim),
            nn.ReLU(),
        )
        self.weight = nn.Parameter(torch.randn(embed_dim, proj_dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        channels = einops.rearrange(tokens, "b n d -> b d n")
        state = einops.repeat(state, "b s -> b d s", d=channels.shape[1])
        y = self.input_proj(torch.cat([channels, state], dim=-1))
        return self.dropout((self.weight * y).sum(dim=1))


class ViTObsEncoder(nn.Module):
    """Camera views and proprioception -> [view 1 features, ..., view V features, flattened state].

    cond["rgb"]: (B, To, V*C, H, W) uint8 with the V views concatenated along channels; only the latest
    `img_cond_steps` frames are used, stacked along channels per view (C*img_cond_steps backbone channels).
    One ViT backbone is shared by all views; each view has its own SpatialEmbedding readout, which also
    sees the flattened state. In training mode with `augment`, every view of every sample is randomly
    shifted by up to 4 pixels; never in eval mode.

    cond["state"]: (B, To, Do), cond["rgb"] as above -> (B, out_dim), out_dim = V*spatial_emb + To*Do
    """

    SHIFT_PAD = 4

    def __init__(self, state_dim: int, cond_steps: int = 1, image_size: int = 96, num_views: int = 2,
                 img_cond_steps: int = 1, patch_size: int = 8, embed_dim: int = 128, depth: int = 1, num_heads: int = 4,
                 spatial_emb: int = 128, dropout: float = 0.0, augment: bool = True, image_channels: int = 3,
                 embed_norm: bool = False):
        super().__init__()
        if img_cond_steps > cond_steps:
            raise ValueError(f"img_cond_steps={img_cond_steps} exceeds cond_steps={cond_steps}: use at most cond_steps.")
        self.flatten_state = FlattenState(state_dim, cond_steps)
        self.image_size = image_size
        self.num_views = num_views
        self.img_cond_steps = img_cond_steps
        self.image_channels = image_channels
        self.augment = augment
        self.backbone = ViTBackbone(image_channels * img_cond_steps, image_size, patch_size, embed_dim, depth,
                                    num_heads, embed_norm)
        self.readouts = nn.ModuleList([
            SpatialEmbedding(self.backbone.num_tokens, embed_dim, self.flatten_state.out_dim, spatial_emb, dropout)
            for _ in range(num_views)
        ])
        self.out_dim = num_views * spatial_emb + self.flatten_state.out_dim

    def images(self, cond: dict) -> torch.Tensor:
        """cond["rgb"]: (B, To, V*C, H, W) uint8 -> (B*V, img_cond_steps*C, H, W) float pixels in [0, 255],
        randomly shifted in training mode when `augment`."""
        rgb = cond["rgb"]
        expected = (self.num_views * self.image_channels, self.image_size, self.image_size)
        if tuple(rgb.shape[2:]) != expected or rgb.shape[1] < self.img_cond_steps:
            raise ValueError(
                f"ViTObsEncoder expects cond['rgb'] of shape (B, To>={self.img_cond_steps}, {expected[0]}, "
                f"{expected[1]}, {expected[2]}), got {tuple(rgb.shape)}: match num_views/image_size to the data."
            )
        if rgb.dtype != torch.uint8:
            raise ValueError(f"ViTObsEncoder expects cond['rgb'] as uint8 pixels in [0, 255], got {rgb.dtype}.")
        rgb = einops.rearrange(rgb[:, -self.img_cond_steps:], "b t (v c) h w -> (b v) (t c) h w", v=self.num_views)
        rgb = rgb.float()
        if self.training and self.augment:
            rgb = random_shift(rgb, self.SHIFT_PAD)
        return rgb

    def forward(self, cond: dict) -> torch.Tensor:
        state = self.flatten_state(cond)
        tokens = einops.rearrange(self.backbone(self.images(cond)), "(b v) n d -> v b n d", v=self.num_views)
        features = [readout(view_tokens, state) for readout, view_tokens in zip(self.readouts, tokens)]
        return torch.cat([*features, state], dim=-1)
