"""Stable-Baselines3's SAC weights (tests/data/reference_dsrl.pt, script/reference/make_dsrl_fixture.py) as the
state dicts of this project's DSRL networks: NoiseActor (SB3's latent_pi, then its mu and log_std heads as one
output layer) and CriticEnsemble (SB3's qf0, qf1 stacked; nn.Linear keeps (out, in) weights, the ensemble
(n, in, out))."""

import torch

HIDDEN_LAYERS = (0, 3, 6)  # Linear indices of an SB3 `create_mlp` Sequential with LayerNorm and Tanh
OUTPUT_LAYER = 9


def noise_actor_state(actor: dict) -> dict:
    """SB3 Actor state -> NoiseActor state (MLP layers at the same indices; mean and log-std heads concatenated)."""
    state = {f"net.layers.{key.removeprefix('latent_pi.')}": value
             for key, value in actor.items() if key.startswith("latent_pi.")}
    state[f"net.layers.{OUTPUT_LAYER}.weight"] = torch.cat([actor["mu.weight"], actor["log_std.weight"]])
    state[f"net.layers.{OUTPUT_LAYER}.bias"] = torch.cat([actor["mu.bias"], actor["log_std.bias"]])
    return state


def critic_ensemble_state(critic: dict, n_critics: int = 2) -> dict:
    """SB3 ContinuousCritic state (qf0, qf1, ...) -> CriticEnsemble state."""
    def stacked(key: str) -> torch.Tensor:
        return torch.stack([critic[f"qf{i}.{key}"] for i in range(n_critics)])

    state = {}
    for index, linear in enumerate((*HIDDEN_LAYERS, OUTPUT_LAYER)):
        state[f"weights.{index}"] = stacked(f"{linear}.weight").transpose(1, 2)
        state[f"biases.{index}"] = stacked(f"{linear}.bias")[:, None]
    for index, linear in enumerate(HIDDEN_LAYERS):
        state[f"norm_weights.{index}"] = stacked(f"{linear + 1}.weight")[:, None]
        state[f"norm_biases.{index}"] = stacked(f"{linear + 1}.bias")[:, None]
    return state
