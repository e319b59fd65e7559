"""Flow-matching core and the noisy sampler of flow fine-tuning: loss, Euler sampling, exact log-probabilities."""

import math

import pytest
import torch
from torch import nn

from model.common.critic import CriticObs
from model.diffusion.mlp import DiffusionMLP
from model.flow.flow import FlowModel
from model.flow.noisy_flow import NoiseNetwork, NoisyFlowPolicy
from model.rl.ppo import PPOSettings, ppo_loss

TA, DA, TO, DO, K = 3, 2, 2, 3, 4


def tiny_velocity():
    return DiffusionMLP(action_dim=DA, horizon_steps=TA, cond_dim=TO * DO, time_dim=8, mlp_dims=[16, 16, 16])


def make_flow(**kwargs):
    torch.manual_seed(0)
    return FlowModel(tiny_velocity(), horizon_steps=TA, obs_dim=DO, action_dim=DA, cond_steps=TO, inference_steps=K,
                     **kwargs)


def make_ppo_flow(sigma_min=0.08, sigma_max=0.16, **kwargs):
    torch.manual_seed(0)
    noise = NoiseNetwork(action_dim=DA, horizon_steps=TA, cond_dim=TO * DO, mlp_dims=[16, 16, 16],
                         sigma_min=sigma_min, sigma_max=sigma_max)
    model = NoisyFlowPolicy(noise_network=noise, network=tiny_velocity(),
                    horizon_steps=TA, obs_dim=DO, action_dim=DA, cond_steps=TO, inference_steps=K,
                    final_action_clip_value=None, **kwargs)
    with torch.no_grad():  # a noise network whose sigma depends on its inputs
        for p in model.noise_network.mlp.output_layer.parameters():
            p.normal_(0, 0.5)
    return model


def cond_of(batch, seed=1):
    return {"state": torch.randn(batch, TO, DO, generator=torch.Generator().manual_seed(seed))}


class ConstantVelocity(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond):
        return torch.full_like(x, self.value) + 0 * self.anchor


def test_flow_matching_loss_is_the_velocity_mse_on_the_straight_path():
    model = make_flow()
    actions, cond = torch.randn(5, TA, DA), cond_of(5)
    torch.manual_seed(3)
    loss = model.bc_loss(actions, cond)
    torch.manual_seed(3)
    t = torch.rand(5)
    noise = torch.randn(5, TA, DA)
    x_t = (1 - t)[:, None, None] * noise + t[:, None, None] * actions
    expected = ((model.network(x_t, t * model.time_scale, cond) - (actions - noise)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    model.time_sampling = "beta"
    assert model.draw_times(1000).mean().item() == pytest.approx(1.5 / 2.5, abs=0.05)  # Beta(1.5, 1)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_euler_sampling_shapes_and_exactness_for_a_constant_velocity(steps):
    model = FlowModel(ConstantVelocity(0.25), horizon_steps=TA, obs_dim=DO, action_dim=DA, cond_steps=TO,
                      inference_steps=steps, final_action_clip_value=None)
    torch.manual_seed(4)
    actions = model.sample(cond_of(6)).actions
    torch.manual_seed(4)
    x0 = model.initial_noise(6)
    assert actions.shape == (6, TA, DA)
    torch.testing.assert_close(actions, x0 + 0.25)


def test_noisy_step_log_probs_equal_torch_distributions_step_by_step():
    model = make_ppo_flow(act_steps=2)
    cond = cond_of(3)
    actions, stored = model.explore(cond)
    chains = stored["chains"]
    assert chains.shape == (3, K + 1, TA, DA)
    torch.testing.assert_close(chains[:, -1], actions)
    expected = torch.zeros(3)
    stds = []
    with torch.no_grad():
        for k in range(K):
            t = torch.full((3,), k / K)
            x = chains[:, k]
            mean = x + model.network(x, t * model.time_scale, cond) / K
            std = model.noise_network(x, t * model.time_scale, cond)
            stds.append(std)
            log_prob = torch.distributions.Normal(mean, std).log_prob(chains[:, k + 1]).clamp(-5, 2)
            expected += log_prob[:, :2].mean(dim=(-2, -1))
        torch.testing.assert_close(model.log_probs(cond, stored), expected[:, None], rtol=1e-5, atol=1e-5)
    stds = torch.stack(stds)
    assert stds.min() >= 0.08 - 1e-6 and stds.max() <= 0.16 + 1e-6
    assert stds.std() > 0, "sigma depends on (x, t, s)"


def test_vanishing_noise_reproduces_the_deterministic_sampler():
    model = make_ppo_flow(sigma_min=1e-7, sigma_max=1e-7)
    cond = cond_of(4)
    torch.manual_seed(5)
    explored, _ = model.explore(cond)
    torch.manual_seed(5)
    deterministic = model.act(cond)
    torch.testing.assert_close(explored, deterministic, rtol=0, atol=1e-5)


def test_ppo_flow_loss_has_unit_ratio_on_fresh_chains_and_trains_both_networks():
    model = make_ppo_flow()
    cond = cond_of(8)
    _, stored = model.explore(cond)
    with torch.no_grad():
        old = model.log_probs(cond, stored)
    advantages = torch.arange(8.0)
    out = ppo_loss(model, CriticObs(TO * DO, [16, 16, 16]), cond, stored, torch.zeros(8), torch.zeros(8), advantages,
                   old, PPOSettings())
    assert out.ratio == pytest.approx(1.0)
    assert out.approx_kl == pytest.approx(0.0, abs=1e-7)
    _, std = model.step_log_probs(cond, stored["chains"])
    gaussian_entropy = 0.5 * math.log(2 * math.pi * math.e) + std.log().mean()
    assert out.entropy_loss.item() == pytest.approx(-gaussian_entropy.item(), rel=1e-5)
    (out.pg_loss + 0.01 * out.entropy_loss).backward()
    for module in (model.network, model.noise_network):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert {id(p) for p in model.actor_parameters()} == \
        {id(p) for p in [*model.network.parameters(), *model.noise_network.parameters()]}


def test_reinflow_deviations_one_time_grid_and_clipped_x0():
    """Deliberate deviations from ReinFlow's code: the sampler steps at the times the log-probs are recomputed at,
    k / K (ReinFlow samples at k / (K - 1), so its fresh chains start PPO at a ratio other than 1), and x_0 is
    clipped to +-randn_clip_value like every other draw (ReinFlow leaves x_0 unclipped)."""
    model = make_ppo_flow(randn_clip_value=0.5)
    assert model.times() == [k / K for k in range(K)]
    seen = []
    original = model.step_distribution

    def recording(x, t, cond):
        seen.append(t[0].item())
        return original(x, t, cond)

    model.step_distribution = recording
    _, stored = model.explore(cond_of(64))
    assert seen == pytest.approx(model.times())
    x0 = stored["chains"][:, 0]
    assert x0.abs().max() == pytest.approx(0.5)


def test_sampling_from_given_noise():
    """sample(noise=x_0) with the sampler's own clipped draw reproduces its chunk; the same noise gives the same chunk
    under any RNG state (the Euler flow is deterministic); other noise gives another chunk."""
    model = make_flow()
    cond = cond_of(6)
    torch.manual_seed(3)
    drawn = model.act(cond)
    torch.manual_seed(3)
    noise = model.initial_noise(6)
    torch.testing.assert_close(model.act(cond, noise=noise), drawn, atol=0, rtol=0)
    torch.manual_seed(9)
    torch.testing.assert_close(model.act(cond, noise=noise), drawn, atol=0, rtol=0)
    assert not torch.allclose(model.act(cond, noise=noise + 1), drawn)
    assert model.decodes_noise and make_ppo_flow().decodes_noise
