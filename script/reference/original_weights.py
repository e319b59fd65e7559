"""This project's pre-trained policies (data/gym/<task>/pretrained/{diffusion,gaussian}_mlp.pt) as the original DPPO
code's checkpoints, under the original's parameter names.

Both map a project ResidualMLP onto the original's (model/common/mlp.py ResidualMLP), names relative to each MLP:
  input_layer.*                 -> layers.0.*
  blocks.j.{fc1,fc2}.*          -> layers.(j + 1).{l1,l2}.*
  blocks.j.{norm1,norm2}.*      -> layers.(j + 1).{norm1,norm2}.*
  output_layer.*                -> layers.(n_blocks + 1).*

Diffusion (model/diffusion/mlp_diffusion.py DiffusionMLP inside DiffusionModel.network; checkpoint {"ema": ...}):
  time_embedding.{1,3}.*        -> network.time_embedding.{1,3}.*
  mlp.*                         -> network.mlp_mean.*
Gaussian (model/common/mlp_gaussian.py Gaussian_MLP inside GaussianModel.network; checkpoint {"model": ...}):
  mean_net.*                    -> network.mlp_mean.* (the project's Tanh output activation has no parameters; the
                                   original applies tanh to the mean in Gaussian_MLP.forward)
  logvar                        -> network.logvar (a learned std: one log-variance per action dim in both codes)
  The std is not in the project's BC checkpoint (trained with a fixed std): in both codes it then starts from the
  config's fixed_std and is bounded by its std_min, std_max. The original's logvar, logvar_min and logvar_max
  (ORIGINAL_STD_PARAMETERS) are therefore left to its config unless the project's state has a logvar.
The original loads its checkpoints with strict=False, which would silently keep random weights under a wrong name, so
`original_actor_state` and `original_gaussian_state` demand the same names and shapes as the original model's own and
raise otherwise.

`probe_inputs` fixes the observations and torch seed on which both codes' samples are compared: for diffusion both
draw x_K with torch.randn (B, Ta, Da) and one randn_like per denoising step; for the Gaussian both draw one standard
normal per chunk element (B, Ta, Da) in the same order (the original's Normal.sample draws torch.normal(loc, scale),
which is randn scaled and shifted), so the same seed gives the same noise.
"""

import torch

PROBE_BATCH = 16
PROBE_SEED = 1234
PROBE_ATOL = 1e-5  # float32 samples of two codes computing the same network in a different operation order
BLOCK_LAYERS = {"fc1": "l1", "fc2": "l2", "norm1": "norm1", "norm2": "norm2"}  # ours -> the original's
ORIGINAL_STD_PARAMETERS = ("network.logvar", "network.logvar_min", "network.logvar_max")  # set by its config


def project_network_state(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """The network weights of a project pre-training checkpoint ({"network": state dict, ...})."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if "network" not in checkpoint:
        raise ValueError(f"{checkpoint_path} has no 'network' entry: pass a project pre-training checkpoint "
                         "(data/gym/<task>/pretrained/diffusion_mlp.pt or gaussian_mlp.pt).")
    return checkpoint["network"]


def n_residual_blocks(project_state: dict[str, torch.Tensor], mlp: str) -> int:
    """How many residual blocks the project MLP named `mlp` has (its `<mlp>.blocks.<j>.*` parameters)."""
    return len({name.split(".")[2] for name in project_state if name.startswith(f"{mlp}.blocks.")})


def residual_layer_name(name: str, n_blocks: int) -> str:
    """The original ResidualMLP's name of a project ResidualMLP parameter, both relative to their MLP (table in the
    module docstring)."""
    parts = name.split(".")
    if parts[0] == "input_layer":
        return f"layers.0.{parts[1]}"
    if parts[0] == "blocks" and parts[2] in BLOCK_LAYERS:
        return f"layers.{int(parts[1]) + 1}.{BLOCK_LAYERS[parts[2]]}.{parts[3]}"
    if parts[0] == "output_layer":
        return f"layers.{n_blocks + 1}.{parts[1]}"
    raise ValueError(f"'{name}' is not a parameter of a project ResidualMLP: only residual MLPs map onto the original's.")


def original_name(project_name: str, n_blocks: int) -> str:
    """The original's name of a project denoiser parameter (table in the module docstring)."""
    if project_name.startswith("time_embedding."):
        return f"network.{project_name}"
    if project_name.startswith("mlp."):
        return f"network.mlp_mean.{residual_layer_name(project_name.removeprefix('mlp.'), n_blocks)}"
    raise ValueError(f"Project parameter '{project_name}' has no counterpart in the original's residual DiffusionMLP: "
                     "only residual denoisers without cond_mlp map.")


def original_gaussian_name(project_name: str, n_blocks: int) -> str:
    """The original's name of a project GaussianMLP parameter (table in the module docstring)."""
    if project_name.startswith("mean_net."):
        return f"network.mlp_mean.{residual_layer_name(project_name.removeprefix('mean_net.'), n_blocks)}"
    if project_name == "logvar":
        return "network.logvar"
    raise ValueError(f"Project parameter '{project_name}' has no counterpart in the original's Gaussian_MLP: only its "
                     "residual mean network and a learned logvar map.")


def matching_state(renamed: dict[str, torch.Tensor], expected_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """`renamed` itself; raises ValueError unless its names are exactly those of `expected_shapes` and every shape
    matches."""
    missing, unexpected = sorted(expected_shapes.keys() - renamed), sorted(renamed.keys() - expected_shapes)
    wrong = [f"{name} {tuple(renamed[name].shape)} vs {tuple(shape)}" for name, shape in expected_shapes.items()
             if name in renamed and renamed[name].shape != shape]
    if missing or unexpected or wrong:
        raise ValueError(f"The project checkpoint does not fit the original's config: missing {missing}, unexpected "
                         f"{unexpected}, shapes (ours vs the original's) {wrong}; use the original config of the "
                         "checkpoint's task and network sizes.")
    return renamed


def original_actor_state(project_state: dict[str, torch.Tensor],
                         expected_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Project denoiser weights renamed for the original DiffusionModel, whose parameter names and shapes are
    `expected_shapes`; raises ValueError unless both the names and every shape match exactly."""
    n_blocks = n_residual_blocks(project_state, "mlp")
    return matching_state({original_name(name, n_blocks): value for name, value in project_state.items()},
                          expected_shapes)


def original_gaussian_state(project_state: dict[str, torch.Tensor],
                            expected_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Project GaussianMLP weights renamed for the original GaussianModel, whose parameter names and shapes are
    `expected_shapes`; raises ValueError unless the names (but the std's, ORIGINAL_STD_PARAMETERS, which its config
    sets, and which a project logvar replaces) and every shape match exactly."""
    n_blocks = n_residual_blocks(project_state, "mean_net")
    renamed = {original_gaussian_name(name, n_blocks): value for name, value in project_state.items()}
    loaded_shapes = {name: shape for name, shape in expected_shapes.items()
                     if name not in ORIGINAL_STD_PARAMETERS or name in renamed}
    return matching_state(renamed, loaded_shapes)


def probe_inputs(obs_dim: int, cond_steps: int) -> dict[str, torch.Tensor]:
    """Normalized observations (PROBE_BATCH, To, Do) in [-1, 1], the same for both codes."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return {"state": torch.rand(PROBE_BATCH, cond_steps, obs_dim, generator=generator) * 2 - 1}
