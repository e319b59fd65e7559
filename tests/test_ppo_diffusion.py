"""Math of DPPO: per-step log-probabilities, their reduction, clip coefficients, denoising discounts, PPO loss."""

import math

import numpy as np
import pytest
import torch
from tolerances import FLOAT32_EPS, approx_kl_atol

from model.common.critic import CriticObs
from model.diffusion.diffusion_rl import FinetuneDiffusion
from model.diffusion.mlp import DiffusionMLP
from model.rl.ppo import PPOSettings, clip_coefficients, normalize_advantages, ppo_loss, term_discounts

TA, DA, TO, DO, K, K_FT = 4, 2, 2, 3, 10, 4
MIN_LOGPROB_STD = 0.15


def tiny_mlp():
    return DiffusionMLP(action_dim=DA, horizon_steps=TA, cond_dim=TO * DO, time_dim=8, mlp_dims=[32, 32, 32])


class DPPOCase:
    """A tiny diffusion policy, its critic and PPO settings; attributes not found here are the policy's."""

    def __init__(self, policy: FinetuneDiffusion, critic: CriticObs, settings: PPOSettings):
        self.policy, self.critic, self.settings = policy, critic, settings

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def loss(self, cond, stored, returns, old_values, advantages, old_log_probs, use_bc_loss=False):
        """The PPO loss of a minibatch with raw advantages, normalized here as the agent does."""
        return ppo_loss(self.policy, self.critic, cond, stored, returns, old_values,
                        normalize_advantages(advantages, self.settings), old_log_probs, self.settings, use_bc_loss)

    def reduced_log_probs(self, cond, chains):
        return self.policy.log_probs(cond, {"chains": chains})

    def clip_coefficients(self):
        return clip_coefficients(self.ft_denoising_steps, self.settings)

    def denoising_discounts(self):
        return term_discounts(self.ft_denoising_steps, self.settings.gamma_denoising)

    def normalize_advantages(self, advantages):
        return normalize_advantages(advantages, self.settings)


def make_ppo(perturb_actor_ft=True, **kwargs):
    """Tiny DPPO case; `actor_ft` is moved away from `network` so tests can tell which one ran."""
    torch.manual_seed(0)
    settings = dict(gamma_denoising=0.9, clip_ploss_coef=0.01, clip_ploss_coef_base=0.001, clip_ploss_coef_rate=3.0)
    settings.update({key: kwargs.pop(key) for key in list(kwargs) if key in PPOSettings.__dataclass_fields__})
    params = dict(network=tiny_mlp(), ft_denoising_steps=K_FT, network_path=None, horizon_steps=TA, obs_dim=DO,
                  action_dim=DA, cond_steps=TO, denoising_steps=K, min_sampling_denoising_std=0.1,
                  min_logprob_denoising_std=MIN_LOGPROB_STD)
    params.update(kwargs)
    policy = FinetuneDiffusion(**params)
    case = DPPOCase(policy, CriticObs(TO * DO, [16, 16, 16]), PPOSettings(**settings))
    if perturb_actor_ft:
        perturb(policy.actor_ft, seed=1)
    return case


def perturb(module, seed, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def make_cond(batch, seed=2):
    return {"state": torch.randn(batch, TO, DO, generator=torch.Generator().manual_seed(seed))}


def fresh_chains(model, cond, seed=3, deterministic=False):
    torch.manual_seed(seed)
    return model.sample(cond, deterministic=deterministic, chain_steps=model.ft_denoising_steps).chains


# ---- log-probabilities -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["ddpm", "ddim"])
def test_chain_log_probs_match_stepwise_normal(mode):
    kwargs = {"use_ddim": True, "ddim_steps": 5, "ft_denoising_steps": 5} if mode == "ddim" else {}
    model = make_ppo(**kwargs)
    n_ft = model.ft_denoising_steps
    cond = make_cond(3)
    chains = fresh_chains(model, cond)
    assert chains.shape == (3, n_ft + 1, TA, DA)
    with torch.no_grad():
        log_probs = model.chain_log_probs(cond, chains)
        assert log_probs.shape == (3, n_ft, TA, DA)
        clamp_hit = False
        for j in range(n_ft):
            k = torch.full((3,), n_ft - 1 - j)
            mean, log_var = model.p_mean_var(chains[:, j], k, cond, model.actor_ft)
            raw_std = (0.5 * log_var).exp()
            clamp_hit |= bool((raw_std < MIN_LOGPROB_STD).any())
            std = raw_std.clamp(min=MIN_LOGPROB_STD)
            expected = torch.distributions.Normal(mean, std).log_prob(chains[:, j + 1])
            torch.testing.assert_close(log_probs[:, j], expected, rtol=1e-5, atol=1e-5)
        assert clamp_hit, "the last step's std is below min_logprob_denoising_std, so the clamp is exercised"
        with_base = model.chain_log_probs(cond, chains, network=model.network)
    assert not torch.allclose(with_base, log_probs), "default network of the log-probs is actor_ft"


def test_reduced_log_probs_clamp_then_mean_over_the_executed_actions():
    model = make_ppo(min_logprob_denoising_std=0.01)
    cond = make_cond(3)
    chains = fresh_chains(model, cond, deterministic=True)
    chains[:, 1:, 0, 0] += 3.0
    with torch.no_grad():
        raw = model.chain_log_probs(cond, chains)
        assert (raw > 2).any() and (raw < -5).any(), "both clamp bounds are exercised"
        reduced = model.reduced_log_probs(cond, chains)
        assert reduced.shape == (3, K_FT)
        torch.testing.assert_close(reduced, raw.clamp(-5, 2).mean(dim=(-2, -1)))
        assert not torch.allclose(reduced, raw.mean(dim=(-2, -1)).clamp(-5, 2))

        short = make_ppo(min_logprob_denoising_std=0.01, act_steps=2)
        torch.testing.assert_close(short.reduced_log_probs(cond, chains), raw[:, :, :2].clamp(-5, 2).mean(dim=(-2, -1)))
        later_actions_moved = chains.clone()
        later_actions_moved[:, -1, 2:] += 5.0
        assert not torch.allclose(model.reduced_log_probs(cond, later_actions_moved)[:, -1], reduced[:, -1])
        torch.testing.assert_close(short.reduced_log_probs(cond, later_actions_moved),
                                   short.reduced_log_probs(cond, chains))


# ---- per-denoising-step coefficients ---------------------------------------------------------
def test_clip_coefficients_exponential_interpolation():
    model = make_ppo(clip_ploss_coef_base=0.001, clip_ploss_coef=0.01, clip_ploss_coef_rate=3.0)
    coefs = model.clip_coefficients().double().numpy()
    u = np.arange(K_FT) / (K_FT - 1)
    expected = 0.001 + (0.01 - 0.001) * (np.exp(3.0 * u) - 1) / (math.exp(3.0) - 1)
    np.testing.assert_allclose(coefs, expected, rtol=1e-6)
    assert coefs[0] == pytest.approx(0.001) and coefs[-1] == pytest.approx(0.01)
    assert np.all(np.diff(coefs) > 0)
    assert make_ppo(ft_denoising_steps=1).clip_coefficients().tolist() == pytest.approx([0.01])
    flat = make_ppo(clip_ploss_coef_base=0.01, clip_ploss_coef=0.01).clip_coefficients()
    torch.testing.assert_close(flat, torch.full((K_FT,), 0.01))


def test_denoising_discounts():
    model = make_ppo(gamma_denoising=0.9)
    expected = [0.9 ** (K_FT - 1 - j) for j in range(K_FT)]
    assert model.denoising_discounts().tolist() == pytest.approx(expected)
    assert model.denoising_discounts()[-1] == 1.0, "the step that outputs the action is not discounted"


def test_normalize_advantages_and_quantile_clip():
    model = make_ppo()
    adv = torch.tensor([3.0, -1.0, 0.5, 10.0, 2.0])
    normalized = model.normalize_advantages(adv)
    torch.testing.assert_close(normalized, (adv - adv.mean()) / adv.std())
    clipped = make_ppo(clip_advantage_lower_quantile=0.25, clip_advantage_upper_quantile=0.75)
    out = clipped.normalize_advantages(adv)
    low, high = torch.quantile(normalized, 0.25), torch.quantile(normalized, 0.75)
    torch.testing.assert_close(out, normalized.clamp(low, high))
    assert torch.equal(make_ppo(norm_adv=False).normalize_advantages(adv), adv)


# ---- PPO loss --------------------------------------------------------------------------------
def rollout_batch(model, batch=6):
    cond = make_cond(batch)
    chains = fresh_chains(model, cond)
    with torch.no_grad():
        old_log_probs = model.reduced_log_probs(cond, chains)
        old_values = model.critic(cond)
    gen = torch.Generator().manual_seed(4)
    advantages = torch.randn(batch, generator=gen)
    returns = torch.randn(batch, generator=gen)
    return cond, chains, returns, old_values, advantages, old_log_probs


def test_loss_on_fresh_chains_has_unit_ratio():
    model = make_ppo()
    cond, chains, returns, old_values, advantages, old_log_probs = rollout_batch(model)
    out = model.loss(cond, {"chains": chains}, returns, old_values, advantages, old_log_probs)
    assert out.ratio == 1.0 and out.approx_kl == 0.0 and out.clipfrac == 0.0
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    expected_pg = -(adv[:, None] * model.denoising_discounts()[None, :]).mean()
    torch.testing.assert_close(out.pg_loss, expected_pg)
    assert out.bc_loss.item() == 0.0


def test_loss_clipping_kl_and_clipfrac_for_known_ratios():
    model = make_ppo()
    cond, chains, returns, old_values, advantages, old_log_probs = rollout_batch(model)
    # clip coefficients are about [0.001, 0.0018, 0.0040, 0.01]; these log-ratios sit clearly inside or outside
    choices = torch.tensor([0.0003, -0.0003, 0.0025, -0.0025, 0.006, -0.006, 0.05, -0.05])
    log_ratio = choices[torch.arange(6 * K_FT) % len(choices)].view(6, K_FT).double()
    out = model.loss(cond, {"chains": chains}, returns, old_values, advantages, old_log_probs - log_ratio.float())

    ratio = log_ratio.exp()
    clip = model.clip_coefficients().double()[None, :]
    adv = ((advantages - advantages.mean()) / (advantages.std() + 1e-8)).double()[:, None]
    adv = adv * model.denoising_discounts().double()[None, :]
    expected_pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    assert out.pg_loss.item() == pytest.approx(expected_pg.item(), rel=1e-4, abs=1e-7)
    # the float32 log-ratio the loss sees is off by the roundings of old_log_probs - log_ratio and new - old
    log_ratio_atol = 2 * FLOAT32_EPS * old_log_probs.abs().max().item()
    assert out.approx_kl == pytest.approx(((ratio - 1) - log_ratio).mean().item(),
                                          abs=approx_kl_atol(ratio, log_ratio_atol, computations=1))
    assert out.clipfrac == pytest.approx(((ratio - 1).abs() > clip).double().mean().item())
    assert 0 < out.clipfrac < 1
    assert out.ratio == pytest.approx(ratio.mean().item(), rel=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pg_step_moves_log_prob_with_advantage(sign):
    """One SGD step on pg_loss with advantage +-1 on sample 0 (0 elsewhere) raises / lowers its log-probs."""
    model = make_ppo(norm_adv=False)
    cond, chains, returns, old_values, _, old_log_probs = rollout_batch(model, batch=3)
    advantages = torch.tensor([sign, 0.0, 0.0])
    optimizer = torch.optim.SGD(model.actor_ft.parameters(), lr=1e-3)
    out = model.loss(cond, {"chains": chains}, returns, old_values, advantages, old_log_probs)
    optimizer.zero_grad()
    out.pg_loss.backward()
    assert all(p.grad is None for p in model.network.parameters()), "the frozen network gets no gradient"
    optimizer.step()
    with torch.no_grad():
        change = model.reduced_log_probs(cond, chains) - old_log_probs
    assert sign * change[0].mean() > 0
    assert torch.all(sign * change[0] > 0), "every fine-tuned step of the sample moves the same way"


def test_value_loss_plain_and_clipped_with_old_values():
    model = make_ppo()
    cond, chains, _, _, advantages, old_log_probs = rollout_batch(model)
    with torch.no_grad():
        values = model.critic(cond)
    returns = values - 0.5
    old_values = values + 1.0
    plain = model.loss(cond, {"chains": chains}, returns, old_values, advantages, old_log_probs).v_loss
    assert plain.item() == pytest.approx(0.5 * 0.25, rel=1e-5)
    random_returns = torch.randn(6, generator=torch.Generator().manual_seed(5))
    plain = model.loss(cond, {"chains": chains}, random_returns, old_values, advantages, old_log_probs).v_loss
    torch.testing.assert_close(plain, 0.5 * ((values - random_returns) ** 2).mean())

    clipped_model = make_ppo(clip_vloss_coef=0.1)
    clipped = clipped_model.loss(cond, {"chains": chains}, returns, old_values, advantages, old_log_probs).v_loss
    # V - old = -1 is clipped to -0.1: the clipped value is old - 0.1 = V + 0.9, 1.4 away from the return
    assert clipped.item() == pytest.approx(0.5 * 1.4**2, rel=1e-5)
    same_old = clipped_model.loss(cond, {"chains": chains}, returns, values, advantages, old_log_probs).v_loss
    assert same_old.item() == pytest.approx(0.5 * 0.25, rel=1e-5)


def test_bc_loss_is_differentiable_in_actor_ft():
    model = make_ppo()
    cond, chains, returns, old_values, advantages, old_log_probs = rollout_batch(model, batch=3)
    out = model.loss(cond, {"chains": chains}, returns, old_values, advantages, old_log_probs, use_bc_loss=True)
    assert torch.isfinite(out.bc_loss) and out.bc_loss.requires_grad


# ---- which network runs which step -----------------------------------------------------------
def test_only_last_ft_steps_use_actor_ft():
    model = make_ppo(perturb_actor_ft=False, use_ddim=True, ddim_steps=5, ft_denoising_steps=2)
    assert all(not p.requires_grad for p in model.network.parameters())
    assert all(p.requires_grad for p in model.actor_ft.parameters())
    assert [model.denoiser_at(k) is model.actor_ft for k in range(5)] == [True, True, False, False, False]
    cond = make_cond(3)
    before = fresh_chains(model, cond, deterministic=True)
    torch.manual_seed(3)
    base_only = model.sample(cond, deterministic=True, chain_steps=2).chains
    torch.testing.assert_close(before, base_only, msg="actor_ft starts as a copy of network")

    perturb(model.actor_ft, seed=6)
    after = fresh_chains(model, cond, deterministic=True)
    assert torch.equal(after[:, 0], before[:, 0]), "steps before the fine-tuned ones run the frozen network"
    assert not torch.allclose(after[:, 1], before[:, 1])
    with torch.no_grad():
        for j in range(2):
            mean, _ = model.p_mean_var(after[:, j], torch.full((3,), 1 - j), cond, model.actor_ft, deterministic=True)
            torch.testing.assert_close(after[:, j + 1], mean.clamp(-1, 1) if j == 1 else mean)
    torch.manual_seed(3)
    with_base = model.sample(cond, deterministic=True, chain_steps=2, network=model.network).chains
    torch.testing.assert_close(with_base, before, msg="network= runs every step")


def test_ft_denoising_steps_validation():
    for kwargs in ({"ft_denoising_steps": K + 1}, {"ft_denoising_steps": 0},
                   {"ft_denoising_steps": 6, "use_ddim": True, "ddim_steps": 5}):
        with pytest.raises(ValueError, match="ft_denoising_steps"):
            FinetuneDiffusion(network=tiny_mlp(), network_path=None, horizon_steps=TA, obs_dim=DO, action_dim=DA,
                              cond_steps=TO, denoising_steps=K, **kwargs)
    model = FinetuneDiffusion(network=tiny_mlp(), ft_denoising_steps=K, horizon_steps=TA, obs_dim=DO, action_dim=DA,
                              cond_steps=TO, denoising_steps=K)
    assert all(model.denoiser_at(k) is model.actor_ft for k in range(K))


def test_critic_shape():
    critic = CriticObs(TO * DO, [16, 16, 16])
    assert critic(make_cond(5)).shape == (5,)
