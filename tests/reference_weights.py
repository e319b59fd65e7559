"""Load state dicts of the original DPPO code (irom-lab/dppo) into this project's modules.

tests/data/reference_baselines.pt (script/reference/make_baseline_fixtures.py) stores each reference network as
{"kind", "config" (the reference constructor's kwargs), "state_dict" (reference names), "forward"}; `build_network`
turns such an entry into the equivalent project module with the same weights.

Reference names -> ours:
  MLP           moduleList.i.linear_1 / norm_1   -> layers.<i-th Linear / i-th LayerNorm of the Sequential>
  ResidualMLP   layers.0                         -> input_layer
                layers.j.{l1, l2, norm1, norm2}  -> blocks.(j-1).{fc1, fc2, norm1, norm2}
                layers.(n_blocks + 1)            -> output_layer
  DiffusionMLP  time_embedding.{1,3}, mlp_mean   -> time_embedding.{1,3}, mlp
  CriticObs     Q1                               -> net
  CriticObsAct  Q1, Q2                           -> q1, q2; always plain MLPs: the reference's keyword is spelled
                                                    `residual_tyle`, so the configs' residual_style=True is dropped
  Gaussian_MLP  mlp_mean (+ tanh)                -> mean_net (out_activation Tanh)
  (fixed_std,   logvar (Da,) clamped to          -> logvar (Da,), clamped to [2 log std_min, 2 log std_max]
  learn_fixed_std)  [logvar_min, logvar_max]        (the same bounds)
"""

import math

import torch
from torch import nn

from model.common.critic import CriticObs, DoubleCriticObsAct
from model.common.gaussian import GaussianMLP
from model.common.mlp import MLP, ResidualMLP
from model.diffusion.mlp import DiffusionMLP

STD_BOUND_RTOL = 1e-6


def sub_state(state: dict, prefix: str) -> dict:
    """The entries of `state` under `prefix.`, with the prefix removed."""
    return {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}


def mlp_state(reference: dict, target: nn.Module) -> dict:
    """A reference MLP / ResidualMLP state dict (keys relative to it) renamed for the project's `target` MLP."""
    if isinstance(target, ResidualMLP):
        return _residual_mlp_state(reference, target)
    if isinstance(target, MLP):
        return _plain_mlp_state(reference, target)
    raise TypeError(f"Expected a project MLP or ResidualMLP, got {type(target).__name__}.")


def _plain_mlp_state(reference: dict, target: MLP) -> dict:
    if not any(key.startswith("moduleList.") for key in reference):
        raise ValueError("The reference network is not a plain MLP (no moduleList.*): build the project one residual.")
    linears = [i for i, layer in enumerate(target.layers) if isinstance(layer, nn.Linear)]
    norms = [i for i, layer in enumerate(target.layers) if isinstance(layer, nn.LayerNorm)]
    renamed = {}
    for key, value in reference.items():
        _, index, layer, param = key.split(".")
        positions = {"linear_1": linears, "norm_1": norms}[layer]
        renamed[f"layers.{positions[int(index)]}.{param}"] = value
    return renamed


def _residual_mlp_state(reference: dict, target: ResidualMLP) -> dict:
    if any(key.startswith("moduleList.") for key in reference):
        raise ValueError("The reference network is a plain MLP (moduleList.*): build the project one with residual off.")
    n_blocks = len(target.blocks)
    renamed = {}
    for key, value in reference.items():
        parts = key.split(".")
        index = int(parts[1])
        if index == 0:
            renamed[f"input_layer.{parts[2]}"] = value
        elif index <= n_blocks:
            if parts[2].startswith("norm"):
                _check_layernorm_eps(target.blocks[index - 1].norm1)
            layer = {"l1": "fc1", "l2": "fc2"}.get(parts[2], parts[2])
            renamed[f"blocks.{index - 1}.{layer}.{parts[3]}"] = value
        elif index == n_blocks + 1:
            renamed[f"output_layer.{parts[2]}"] = value
        else:
            raise ValueError(f"{key}: the reference's final LayerNorm (use_layernorm_final) has no project counterpart.")
    return renamed


def _check_layernorm_eps(norm: nn.Module) -> None:
    """The reference's residual blocks normalize with eps 1e-6; only an equal eps gives the same outputs."""
    if norm.eps != 1e-6:
        raise ValueError(f"The reference's residual LayerNorms use eps=1e-6, the project's {norm.eps}: outputs would "
                         "differ; compare without layernorm or set the project's eps.")


def load_diffusion_mlp(module: DiffusionMLP, state: dict) -> None:
    """Reference model/diffusion/mlp_diffusion.py DiffusionMLP weights -> ours (no cond_mlp in the project)."""
    if any(key.startswith("cond_mlp.") for key in state):
        raise ValueError("The reference DiffusionMLP has a cond_mlp (cond_mlp_dims), which the project's lacks.")
    renamed = {key: value for key, value in state.items() if key.startswith("time_embedding.")}
    renamed.update({f"mlp.{key}": value for key, value in mlp_state(sub_state(state, "mlp_mean"), module.mlp).items()})
    module.load_state_dict(renamed)


def load_critic_obs(module: CriticObs, state: dict) -> None:
    """Reference CriticObs (Q1) -> ours (net)."""
    module.load_state_dict({f"net.{key}": value for key, value in mlp_state(sub_state(state, "Q1"), module.net).items()})


def load_double_critic_obs_act(module: DoubleCriticObsAct, state: dict) -> None:
    """Reference CriticObsAct (Q1, Q2) -> ours (q1, q2); build ours with residual_style=False."""
    renamed = {}
    for ours, theirs in (("q1", "Q1"), ("q2", "Q2")):
        mapped = mlp_state(sub_state(state, theirs), getattr(module, ours))
        renamed.update({f"{ours}.{key}": value for key, value in mapped.items()})
    module.load_state_dict(renamed)


def load_gaussian_mlp(module: GaussianMLP, state: dict) -> None:
    """Reference Gaussian_MLP with fixed_std and learn_fixed_std -> ours (built with learn_fixed_std=True)."""
    if "mlp_base.moduleList.0.linear_1.weight" in state or "mlp_base.layers.0.weight" in state:
        raise ValueError("The reference Gaussian_MLP has a state-dependent log-variance head (fixed_std=None), "
                         "which the project's GaussianMLP lacks.")
    if "logvar" not in state or not hasattr(module, "logvar"):
        raise ValueError("Only a learned per-dimension std (reference learn_fixed_std=True) maps onto logvar.")
    for bound, ours in (("logvar_min", module.std_min), ("logvar_max", module.std_max)):
        theirs = math.exp(0.5 * state[bound].item())
        if not math.isclose(theirs, ours, rel_tol=STD_BOUND_RTOL):
            raise ValueError(f"Reference {bound} gives std {theirs}, the project module uses {ours}.")
    renamed = {f"mean_net.{key}": value
               for key, value in mlp_state(sub_state(state, "mlp_mean"), module.mean_net).items()}
    renamed["logvar"] = state["logvar"]
    module.load_state_dict(renamed)


def build_network(entry: dict) -> nn.Module:
    """The project module equivalent to a fixture network entry ({"kind", "config", "state_dict"}), weights loaded."""
    config, state = entry["config"], entry["state_dict"]
    kind = entry["kind"]
    if kind == "diffusion_mlp":
        module = DiffusionMLP(config["action_dim"], config["horizon_steps"], config["cond_dim"],
                              time_dim=config["time_dim"], mlp_dims=config["mlp_dims"],
                              activation=config["activation_type"], out_activation=config["out_activation_type"],
                              use_layernorm=config["use_layernorm"], residual_style=config["residual_style"])
        load_diffusion_mlp(module, state)
    elif kind == "critic_obs":
        module = CriticObs(config["cond_dim"], config["mlp_dims"], activation=config["activation_type"],
                           use_layernorm=config["use_layernorm"], residual_style=config["residual_style"])
        load_critic_obs(module, state)
    elif kind == "double_critic_obs_act":
        module = DoubleCriticObsAct(config["cond_dim"], config["action_dim"], config["action_steps"], config["mlp_dims"],
                                    activation=config["activation_type"], use_layernorm=config["use_layernorm"],
                                    residual_style=False)
        load_double_critic_obs_act(module, state)
    elif kind == "gaussian_mlp":
        module = GaussianMLP(config["action_dim"], config["horizon_steps"], config["cond_dim"], mlp_dims=config["mlp_dims"],
                             activation=config["activation_type"], residual_style=config["residual_style"],
                             use_layernorm=config["use_layernorm"], tanh_output=config["tanh_output"],
                             fixed_std=config["fixed_std"], learn_fixed_std=config["learn_fixed_std"],
                             std_min=config["std_min"], std_max=config["std_max"])
        load_gaussian_mlp(module, state)
    else:
        raise ValueError(f"Unknown reference network kind '{kind}'.")
    return module.eval()


def network_entries(fixture: dict) -> dict[str, dict]:
    """Every network entry of the fixture, keyed 'algorithm.network'."""
    return {f"{algorithm}.{name}": entry for algorithm, content in fixture.items() if isinstance(content, dict)
            for name, entry in content.get("networks", {}).items()}


@torch.no_grad()
def project_forward(module: nn.Module, kind: str, inputs: dict) -> dict[str, torch.Tensor]:
    """The project module's outputs on a fixture entry's forward inputs, shaped as the reference's outputs."""
    cond = {"state": inputs["state"]}
    if kind == "diffusion_mlp":
        return {"output": module(inputs["x"], inputs["t"], cond)}
    if kind == "critic_obs":
        return {"output": module(cond).unsqueeze(-1)}
    if kind == "double_critic_obs_act":
        q1, q2 = module(cond, inputs["actions"])
        return {"q1": q1, "q2": q2}
    if kind == "gaussian_mlp":
        mean, std = module(cond)
        return {"mean": mean.flatten(1), "scale": std.flatten(1)}
    raise ValueError(f"Unknown reference network kind '{kind}'.")
