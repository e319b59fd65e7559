"""ReinFlow's (github.com/ReinFlow/ReinFlow) flow-policy weights in this project's modules.

Velocity network. ReinFlow's FlowMLP (model/flow/mlp_flow.py) is this project's DiffusionMLP layer for layer:
the same input order [flattened x_t (Ta*Da), time embedding (time_dim), flattened obs (To*Do)], the same time
embedding sinusoidal(time_dim) -> Linear(time_dim, 2 time_dim) -> Mish -> Linear(2 time_dim, time_dim), the same
residual MLP (input Linear, two-layer pre-activation blocks, output Linear). Only the time input differs: ReinFlow
feeds the flow time t in [0, 1] to the sinusoid as it is, this project's FlowModel feeds t * time_scale
(TIME_SCALE = 100). With ReinFlow's weights, FlowModel needs time_scale = 1.

Noise network. ReinFlow's ExploreNoiseNet (model/flow/mlp_flow.py, NoisyFlowMLP.forward) computes, per step,
    h     = MLP([time_emb(t).detach(), s])           # time_emb: the velocity network's embedding MLP output (16)
    sigma = exp(log sigma_min + (log sigma_max - log sigma_min) * (tanh(h) + 1) / 2)     # (B, Ta*Da)
with MLP = Linear(time_dim + To*Do, 64) -> Tanh -> Linear(64, 64) -> Tanh -> Linear(64, Ta*Da) (Hopper:
noise_hidden_dims [64, 64], explore_net_activation_type Tanh; plain, not residual; PyTorch default init). It does
not read x_t. A project noise network takes these weights when it is model.common.mlp.MLP(time_dim + cond_dim,
hidden_dims, Ta*Da, activation="Tanh") fed with [velocity network's time_embedding(t), flattened state] and
squashed as above; ReinFlow stores the bounds as log-variances (logvar = 2 log sigma).
"""

import math
import re

import torch

FLOW_MLP_BLOCK = re.compile(r"mlp_mean\.layers\.(\d+)\.(l1|l2)\.(weight|bias)")
FLOW_MLP_LINEAR = re.compile(r"mlp_mean\.layers\.(\d+)\.(weight|bias)")
NOISE_MLP_LINEAR = re.compile(r"explore_noise_net\.mlp_logvar\.moduleList\.(\d+)\.linear_1\.(weight|bias)")


def strip_prefix(state: dict, prefix: str) -> dict:
    return {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}


def velocity_state_dict(reference_state: dict, prefix: str = "") -> dict:
    """ReinFlow FlowMLP state dict (names after `prefix`, e.g. "actor_ft.policy.") -> DiffusionMLP state dict.

    time_embedding.{1,3} keep their names; mlp_mean.layers.0 -> mlp.input_layer, mlp_mean.layers.i.l{1,2}
    -> mlp.blocks.(i-1).fc{1,2}, the last mlp_mean.layers.n -> mlp.output_layer.
    """
    state = strip_prefix(reference_state, prefix)
    if any(name.startswith("cond_mlp") for name in state):
        raise ValueError("ReinFlow FlowMLP with cond_mlp_dims: DiffusionMLP has no observation MLP.")
    linear_indices = [int(m.group(1)) for m in map(FLOW_MLP_LINEAR.fullmatch, state) if m]
    last = max(linear_indices)
    mapped = {}
    for name, value in state.items():
        if name.startswith("time_embedding."):
            mapped[name] = value
        elif block := FLOW_MLP_BLOCK.fullmatch(name):
            index, layer, kind = block.groups()
            mapped[f"mlp.blocks.{int(index) - 1}.fc{layer[1]}.{kind}"] = value
        elif linear := FLOW_MLP_LINEAR.fullmatch(name):
            index, kind = int(linear.group(1)), linear.group(2)
            mapped[f"mlp.{'input_layer' if index == 0 else 'output_layer'}.{kind}"] = value
            if 0 < index < last:
                raise ValueError(f"unexpected FlowMLP layer {name}")
        else:
            raise ValueError(f"no DiffusionMLP counterpart for FlowMLP parameter {name}")
    return mapped


def noise_mlp_state_dict(reference_state: dict, prefix: str = "") -> dict:
    """ReinFlow NoisyFlowMLP state dict (names after `prefix`, e.g. "actor_ft.") -> model.common.mlp.MLP state dict:
    explore_noise_net.mlp_logvar.moduleList.i.linear_1 -> layers.(2 i) (MLP interleaves Linear and activation)."""
    mapped = {}
    for name, value in strip_prefix(reference_state, prefix).items():
        if linear := NOISE_MLP_LINEAR.fullmatch(name):
            mapped[f"layers.{2 * int(linear.group(1))}.{linear.group(2)}"] = value
    return mapped


def sigma_bounds(reference_state: dict, prefix: str = "") -> tuple[float, float]:
    """(sigma_min, sigma_max) from ReinFlow's explore_noise_net.logvar_min / logvar_max."""
    state = strip_prefix(reference_state, prefix)
    return tuple(math.exp(0.5 * state[f"explore_noise_net.logvar_{end}"].item()) for end in ("min", "max"))


def squash_to_sigma(h: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """ReinFlow's ExploreNoiseNet.process_noise: tanh, then log-space interpolation between the bounds."""
    low, high = math.log(sigma_min), math.log(sigma_max)
    return torch.exp(low + (high - low) * (torch.tanh(h) + 1) / 2)
