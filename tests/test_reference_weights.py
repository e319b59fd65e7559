"""The project's networks, given the reference's weights (tests/reference_weights.py), compute what the reference's
networks computed on the same inputs (tests/data/reference_baselines.pt, made by
script/reference/make_baseline_fixtures.py from irom-lab/dppo)."""

import os

import hydra
import pytest
import torch
from reference_weights import build_network, network_entries, project_forward

from model.common.mlp import MLP, ResidualMLP

FIXTURE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference_baselines.pt")
FORWARD_ATOL = 1e-6
FIXTURE = torch.load(FIXTURE_PATH, weights_only=True)
ENTRIES = network_entries(FIXTURE)


def test_fixture_covers_every_network_kind():
    assert {entry["kind"] for entry in ENTRIES.values()} == {"diffusion_mlp", "critic_obs", "double_critic_obs_act",
                                                            "gaussian_mlp"}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_project_network_matches_reference_forward(name):
    entry = ENTRIES[name]
    module = build_network(entry)
    expected = entry["forward"]["outputs"]
    actual = project_forward(module, entry["kind"], entry["forward"]["inputs"])
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=FORWARD_ATOL, rtol=0)


def test_reference_q_critics_are_plain_mlps_despite_residual_style():
    """The reference's CriticObsAct reads `residual_tyle`: with residual_style=True in its config it is a plain MLP."""
    entry = ENTRIES["dql.critic"]
    assert entry["config"]["residual_style"] is True
    assert any(key.startswith("Q1.moduleList.") for key in entry["state_dict"])
    assert isinstance(build_network(entry).q1, MLP)
    assert isinstance(build_network(ENTRIES["dawr.critic"]).net, ResidualMLP)


def test_different_weights_give_different_outputs():
    """Guards the forward comparison: the updated Gaussian actor's reference outputs differ from the first one's."""
    before, after = ENTRIES["gaussian_ppo.actor"], ENTRIES["gaussian_ppo.actor_updated"]
    module = build_network(before)
    outputs = project_forward(module, "gaussian_mlp", after["forward"]["inputs"])
    assert not torch.allclose(outputs["mean"], after["forward"]["outputs"]["mean"], atol=1e-4)


@pytest.mark.parametrize("config_name,critic_key", [("ft_dql_diffusion_mlp", "critic"), ("ft_idql_diffusion_mlp", "critic_q")])
def test_project_q_critics_are_residual_and_residual_style_false_gives_the_references_plain_ones(
        compose_cfg, config_name, critic_key):
    """Deliberate deviation (README): the configs' residual_style: true reaches the project's Q critics (the
    reference's misspelt keyword drops it). Same layers and parameter count (137,985 per Q on Hopper); the residual
    critic adds one skip connection around its two hidden 256 x 256 layers. residual_style=false is the reference's."""
    residual = hydra.utils.instantiate(compose_cfg(config_name, ["device=cpu"])[critic_key])
    plain = hydra.utils.instantiate(compose_cfg(config_name, ["device=cpu", f"{critic_key}.residual_style=false"])[critic_key])
    assert isinstance(residual.q1, ResidualMLP) and isinstance(residual.q2, ResidualMLP)
    assert isinstance(plain.q1, MLP) and isinstance(plain.q2, MLP)
    count = sum(p.numel() for p in residual.q1.parameters())
    assert count == sum(p.numel() for p in plain.q1.parameters()) == 137_985
