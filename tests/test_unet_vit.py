"""DiffusionUNet1D, ViTObsEncoder and FlattenState: shapes, gradients, augmentation, and equality with the reference.

The `*_matches_reference` tests compare against tests/data/unet_vit_reference.pt, expected outputs computed once by
running the original DPPO code (irom-lab/dppo: model/diffusion/unet.py Unet1D; model/common/vit.py VitEncoder with
model/common/modules.py SpatialEmb as ViTCritic combines them) on CPU. To make that file: build the module below
with `reference_config`, fill it with `fill_parameters`, load that state dict into the reference module with its
parameter names mapped (time_mlp -> time_embedding, down_modules/mid_modules/up_modules -> down_levels/mid_blocks/
up_levels, blocks.{0,1} -> conv{1,2}, GroupNorm block.2 -> block.1, vit.net.i.{layer_norm1,layer_norm2,mha.qkv_proj}
-> backbone.layers.i.{norm1,norm2,self_attn.in_proj}, compress{1,2} -> readouts.{0,1}), run it in eval mode on
`reference_inputs`, and save the outputs.
"""

import math
import os
import zlib

import pytest
import torch
from torch import nn

from model.common.obs_encoder import FlattenState, ViTObsEncoder, random_shift, shift_images
from model.diffusion.unet import DiffusionUNet1D

REFERENCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "unet_vit_reference.pt")
REFERENCE_ATOL = 1e-5
SHIFT_PAD = 4

UNET_CONFIGS = {
    # The robomimic UNet config of the paper: dims 64 x [1, 2], FiLM scale and bias, larger cond encoder.
    "unet_paper": dict(action_dim=7, horizon_steps=16, cond_dim=10, time_dim=16, dim=64, dim_mults=(1, 2),
                       kernel_size=5, n_groups=8, cond_predict_scale=True, smaller_encoder=False),
    # Three levels (two up levels), bias-only FiLM, smaller cond encoder.
    "unet_small": dict(action_dim=3, horizon_steps=8, cond_dim=10, time_dim=8, dim=16, dim_mults=(1, 2, 4),
                       kernel_size=3, n_groups=4, cond_predict_scale=False, smaller_encoder=True),
}
VIT_CONFIGS = {
    "vit_two_views": dict(state_dim=5, cond_steps=2, num_views=2, img_cond_steps=1, embed_norm=False),
    "vit_one_view_two_frames": dict(state_dim=5, cond_steps=2, num_views=1, img_cond_steps=2, embed_norm=True),
}


def fill_parameters(model: nn.Module, seed: int) -> None:
    """Deterministic weights that depend only on each parameter's name and shape (not on construction order):
    normal(0, 1/sqrt(fan_in)) for matrices and kernels, 1 + normal(0, 0.1) for norm scales, normal(0, 0.1) else."""
    norms = (nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for name, param in model.named_parameters():
            generator = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
            noise = torch.randn(param.shape, generator=generator)
            owner = model.get_submodule(name.rpartition(".")[0])
            if param.dim() >= 2:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif isinstance(owner, norms) and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def reference_inputs(batch: int, horizon_steps: int, action_dim: int, state_dim: int, cond_steps: int,
                     num_views: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """x: (B, Ta, Da), t: (B,), cond with state (B, To, Do) and, when num_views, rgb (B, To, 3V, 96, 96) uint8."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, horizon_steps, action_dim, generator=generator)
    t = torch.randint(0, 100, (batch,), generator=generator)
    cond = {"state": torch.randn(batch, cond_steps, state_dim, generator=generator)}
    if num_views:
        cond["rgb"] = torch.randint(0, 256, (batch, cond_steps, 3 * num_views, 96, 96), generator=generator,
                                    dtype=torch.uint8)
    return x, t, cond


def unet_and_inputs(name: str) -> tuple[DiffusionUNet1D, torch.Tensor, torch.Tensor, dict]:
    config = UNET_CONFIGS[name]
    net = DiffusionUNet1D(**config)
    fill_parameters(net, seed=1)
    x, t, cond = reference_inputs(2, config["horizon_steps"], config["action_dim"], state_dim=5, cond_steps=2)
    return net, x, t, cond


def vit_and_inputs(name: str) -> tuple[ViTObsEncoder, dict]:
    config = VIT_CONFIGS[name]
    encoder = ViTObsEncoder(**config)
    fill_parameters(encoder, seed=2)
    _, _, cond = reference_inputs(2, 1, 1, config["state_dim"], config["cond_steps"], num_views=config["num_views"])
    return encoder.eval(), cond


def assert_every_parameter_gets_gradient(module: nn.Module) -> None:
    missing = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().gt(0).any()]
    assert not missing, f"no gradient reaches {missing}"


def small_vit(**overrides) -> ViTObsEncoder:
    config = dict(state_dim=5, cond_steps=2, num_views=2, embed_dim=32, spatial_emb=16)
    return ViTObsEncoder(**{**config, **overrides})


@pytest.mark.parametrize("horizon_steps, action_dim", [(16, 7), (8, 7), (4, 7)])
def test_unet_output_shape(horizon_steps, action_dim):
    net = DiffusionUNet1D(action_dim, horizon_steps, cond_dim=10)
    x, t, cond = reference_inputs(3, horizon_steps, action_dim, state_dim=5, cond_steps=2)
    assert net(x, t, cond).shape == (3, horizon_steps, action_dim)


def test_unet_gradients_reach_every_parameter():
    net, x, t, cond = unet_and_inputs("unet_paper")
    net(x, t, cond).square().mean().backward()
    assert_every_parameter_gets_gradient(net)


def test_unet_output_depends_on_step_and_observation():
    net, x, t, cond = unet_and_inputs("unet_paper")
    with torch.no_grad():
        out = net(x, t, cond)
        other_step = net(x, t + 1, cond)
        other_obs = net(x, t, {"state": cond["state"] + 0.5})
    assert (out - other_step).abs().max() > 1e-3
    assert (out - other_obs).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_matches_reference(name):
    net, x, t, cond = unet_and_inputs(name)
    expected = torch.load(REFERENCE_PATH)[name]
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, cond), expected, atol=REFERENCE_ATOL, rtol=0)


def test_unet_rejects_horizon_it_cannot_halve():
    with pytest.raises(ValueError, match="multiple of 2"):
        DiffusionUNet1D(7, 5, cond_dim=10)
    with pytest.raises(ValueError, match="multiple of 4"):
        DiffusionUNet1D(7, 6, cond_dim=10, dim_mults=(1, 2, 4))


def test_unet_checks_state_features():
    net = DiffusionUNet1D(7, 4, cond_dim=11)
    x, t, cond = reference_inputs(2, 4, 7, state_dim=5, cond_steps=2)
    with pytest.raises(ValueError, match="obs_dim/cond_steps"):
        net(x, t, cond)


def test_unet_with_image_encoder():
    encoder = small_vit()
    with pytest.raises(ValueError, match="obs_encoder.out_dim"):
        DiffusionUNet1D(7, 16, cond_dim=10, obs_encoder=encoder)
    net = DiffusionUNet1D(7, 16, cond_dim=None, obs_encoder=encoder)
    x, t, cond = reference_inputs(2, 16, 7, state_dim=5, cond_steps=2, num_views=2)
    net(x, t, cond).square().mean().backward()
    assert_every_parameter_gets_gradient(net)


@pytest.mark.parametrize("num_views", [1, 2])
def test_vit_output_shape_and_tokens(num_views):
    encoder = ViTObsEncoder(state_dim=5, cond_steps=2, num_views=num_views)
    _, _, cond = reference_inputs(2, 1, 1, state_dim=5, cond_steps=2, num_views=num_views)
    assert encoder.backbone.num_tokens == 121
    tokens = encoder.backbone.patch_embedding(encoder.images(cond))
    assert tokens.shape == (2 * num_views, 121, 128)
    assert encoder.out_dim == num_views * 128 + 2 * 5
    assert encoder(cond).shape == (2, encoder.out_dim)


def test_vit_output_ends_with_flattened_state():
    encoder = small_vit()
    _, _, cond = reference_inputs(2, 1, 1, state_dim=5, cond_steps=2, num_views=2)
    torch.testing.assert_close(encoder(cond)[:, -10:], cond["state"].reshape(2, 10), atol=0, rtol=0)


def test_vit_gradients_reach_every_parameter():
    encoder = small_vit(embed_norm=True).train()
    _, _, cond = reference_inputs(2, 1, 1, state_dim=5, cond_steps=2, num_views=2)
    encoder(cond).square().mean().backward()
    assert_every_parameter_gets_gradient(encoder)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image: (C, H, W) moved down by dy and right by dx pixels, edges replicated (clamped indices)."""
    _, height, width = image.shape
    rows = (torch.arange(height) - dy).clamp(0, height - 1)
    cols = (torch.arange(width) - dx).clamp(0, width - 1)
    return image[:, rows][:, :, cols]


def translation_of(original: torch.Tensor, moved: torch.Tensor) -> list[tuple[int, int]]:
    """All integer (dy, dx) in [-SHIFT_PAD, SHIFT_PAD]^2 that turn `original` exactly into `moved`."""
    offsets = range(-SHIFT_PAD, SHIFT_PAD + 1)
    return [(dy, dx) for dy in offsets for dx in offsets if torch.equal(shifted(original, dy, dx), moved)]


def test_random_shift_is_an_integer_translation():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 96, 96)).float()
    moved = random_shift(images, SHIFT_PAD)
    translations = [translation_of(original, out) for original, out in zip(images, moved)]
    assert all(len(found) == 1 for found in translations), "every image is one exact translation within +-4"
    assert len({found[0] for found in translations}) > 1, "the offsets differ between images"
    assert any(found[0] != (0, 0) for found in translations)


def test_vit_shifts_views_only_in_training_mode():
    torch.manual_seed(0)
    encoder = small_vit(augment=True)
    _, _, cond = reference_inputs(4, 1, 1, state_dim=5, cond_steps=2, num_views=2)
    raw = encoder.eval().images(cond)
    torch.testing.assert_close(raw, cond["rgb"][:, -1].reshape(8, 3, 96, 96).float(), atol=0, rtol=0)
    augmented = encoder.train().images(cond)
    translations = [translation_of(original, out) for original, out in zip(raw, augmented)]
    assert all(len(found) == 1 for found in translations)
    assert any(found[0] != (0, 0) for found in translations)
    assert torch.equal(ViTObsEncoder(state_dim=5, cond_steps=2, augment=False).train().images(cond), raw)


def test_vit_eval_output_is_deterministic():
    encoder = small_vit(dropout=0.5).eval()
    _, _, cond = reference_inputs(2, 1, 1, state_dim=5, cond_steps=2, num_views=2)
    with torch.no_grad():
        assert torch.equal(encoder(cond), encoder(cond))


@pytest.mark.parametrize("name", list(VIT_CONFIGS))
def test_vit_matches_reference(name):
    encoder, cond = vit_and_inputs(name)
    expected = torch.load(REFERENCE_PATH)[name]
    with torch.no_grad():
        torch.testing.assert_close(encoder(cond), expected, atol=REFERENCE_ATOL, rtol=0)


def test_vit_rejects_wrong_image_shape():
    encoder = small_vit()
    _, _, cond = reference_inputs(2, 1, 1, state_dim=5, cond_steps=2, num_views=1)
    with pytest.raises(ValueError, match="num_views/image_size"):
        encoder(cond)
    _, _, cond = reference_inputs(2, 1, 1, state_dim=5, cond_steps=2, num_views=2)
    with pytest.raises(ValueError, match="uint8"):
        encoder({"state": cond["state"], "rgb": cond["rgb"].float() / 255})


def test_flatten_state_checks_feature_count():
    flatten = FlattenState(state_dim=5, cond_steps=2)
    state = torch.randn(3, 2, 5)
    assert flatten.out_dim == 10
    torch.testing.assert_close(flatten({"state": state}), state.reshape(3, 10))
    with pytest.raises(ValueError, match="obs_dim/cond_steps"):
        flatten({"state": torch.randn(3, 2, 4)})


def test_shift_images_translates_uint8_rollout_images_exactly():
    """Fine-tuning shifts a rollout's uint8 images once: each (T, N, C, H, W) image becomes an integer translation of
    itself within +-pad (edges replicated), still uint8 and with the original pixel values."""
    torch.manual_seed(0)
    rows = torch.arange(12, dtype=torch.uint8)[:, None].expand(12, 12)  # pixel value = row index
    rgb = rows.expand(3, 2, 3, 12, 12).clone()  # (T=3, N=2, C=3, H, W)
    shifted = shift_images(rgb, pad=2)
    assert shifted.dtype == torch.uint8 and shifted.shape == rgb.shape
    offsets = shifted[..., 6, 0].int() - 6  # the row index now seen at row 6
    assert offsets.abs().max() <= 2 and len(offsets.unique()) > 1
    expected = (torch.arange(12)[None, None, None, :] + offsets[..., None]).clamp(0, 11)
    assert torch.equal(shifted[..., :, 0].int(), expected.int())
