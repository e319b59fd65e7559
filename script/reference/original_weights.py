"""This project's pre-trained diffusion policy (data/gym/<task>/pretrained/diffusion_mlp.pt) as the original DPPO
code's checkpoint: {"ema": state dict under the original's parameter names}.

Project names -> the original's (model/diffusion/mlp_diffusion.py DiffusionMLP inside DiffusionModel.network):
  time_embedding.{1,3}.*        -> network.time_embedding.{1,3}.*
  mlp.input_layer.*             -> network.mlp_mean.layers.0.*
  mlp.blocks.j.{fc1,fc2}.*      -> network.mlp_mean.layers.(j + 1).{l1,l2}.*
  mlp.blocks.j.{norm1,norm2}.*  -> network.mlp_mean.layers.(j + 1).{norm1,norm2}.*
  mlp.output_layer.*            -> network.mlp_mean.layers.(n_blocks + 1).*
The original loads its checkpoint with strict=False, which would silently keep random weights under a wrong name, so
`original_actor_state` demands the same names and shapes as the original model's own and raises otherwise.

`probe_inputs` fixes the observations and torch seed on which both codes' samples are compared: both draw x_K with
torch.randn (B, Ta, Da) and one randn_like per denoising step, so the same seed gives the same noise.
"""

import torch

PROBE_BATCH = 16
PROBE_SEED = 1234
PROBE_ATOL = 1e-5  # float32 samples of two codes computing the same network in a different operation order
BLOCK_LAYERS = {"fc1": "l1", "fc2": "l2", "norm1": "norm1", "norm2": "norm2"}  # ours -> the original's


def project_network_state(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """The denoiser weights of a project pre-training checkpoint ({"network": state dict, ...})."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if "network" not in checkpoint:
        raise ValueError(f"{checkpoint_path} has no 'network' entry: pass a project pre-training checkpoint "
                         "(data/gym/<task>/pretrained/diffusion_mlp.pt).")
    return checkpoint["network"]


def original_name(project_name: str, n_blocks: int) -> str:
    """The original's name of a project denoiser parameter (table in the module docstring)."""
    parts = project_name.split(".")
    if parts[0] == "time_embedding":
        return f"network.{project_name}"
    if parts[:2] == ["mlp", "input_layer"]:
        return f"network.mlp_mean.layers.0.{parts[2]}"
    if parts[:2] == ["mlp", "blocks"] and parts[3] in BLOCK_LAYERS:
        return f"network.mlp_mean.layers.{int(parts[2]) + 1}.{BLOCK_LAYERS[parts[3]]}.{parts[4]}"
    if parts[:2] == ["mlp", "output_layer"]:
        return f"network.mlp_mean.layers.{n_blocks + 1}.{parts[2]}"
    raise ValueError(f"Project parameter '{project_name}' has no counterpart in the original's residual DiffusionMLP: "
                     "only residual denoisers without cond_mlp map.")


def original_actor_state(project_state: dict[str, torch.Tensor],
                         expected_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Project denoiser weights renamed for the original DiffusionModel, whose parameter names and shapes are
    `expected_shapes`; raises ValueError unless both the names and every shape match exactly."""
    n_blocks = len({name.split(".")[2] for name in project_state if name.startswith("mlp.blocks.")})
    renamed = {original_name(name, n_blocks): value for name, value in project_state.items()}
    missing, unexpected = sorted(expected_shapes.keys() - renamed), sorted(renamed.keys() - expected_shapes)
    wrong = [f"{name} {tuple(renamed[name].shape)} vs {tuple(shape)}" for name, shape in expected_shapes.items()
             if name in renamed and renamed[name].shape != shape]
    if missing or unexpected or wrong:
        raise ValueError(f"The project checkpoint does not fit the original's config: missing {missing}, unexpected "
                         f"{unexpected}, shapes (ours vs the original's) {wrong}; use the original config of the "
                         "checkpoint's task and network sizes.")
    return renamed


def probe_inputs(obs_dim: int, cond_steps: int) -> dict[str, torch.Tensor]:
    """Normalized observations (PROBE_BATCH, To, Do) in [-1, 1], the same for both codes."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return {"state": torch.rand(PROBE_BATCH, cond_steps, obs_dim, generator=generator) * 2 - 1}
