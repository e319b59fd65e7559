"""Math of the diffusion core: schedule, forward process, posterior, x0 inversion, DDPM/DDIM sampling, BC loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.common.embedding import embed_distinct_steps, time_embedding_mlp
from model.common.mlp import MLP, ResidualMLP, Tanh
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.mlp import DiffusionMLP
from model.diffusion.schedules import cosine_beta_schedule, ddim_timesteps

TA, DA, TO, DO, K = 4, 2, 2, 3, 10


class FixedOutput(nn.Module):
    """Stub denoiser that ignores its input and returns a fixed tensor (B, Ta, Da)."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.register_buffer("output", output)

    def forward(self, x, t, cond):
        return self.denoise(x, t, self.encode(cond))

    def encode(self, cond):
        return cond["state"].new_zeros(cond["state"].shape[0], 0)

    def denoise(self, x, t, features):
        return self.output


def tiny_mlp(mlp_dims=(32, 32, 32)):
    return DiffusionMLP(action_dim=DA, horizon_steps=TA, cond_dim=TO * DO, time_dim=8, mlp_dims=list(mlp_dims))


def make_model(network=None, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("denoising_steps", K)
    return DiffusionModel(network=network or tiny_mlp(), horizon_steps=TA, obs_dim=DO, action_dim=DA, cond_steps=TO,
                          **kwargs)


def make_cond(batch, seed=1):
    return {"state": torch.randn(batch, TO, DO, generator=torch.Generator().manual_seed(seed))}


def numpy_alphas_cumprod(denoising_steps, s=0.008):
    """Nichol & Dhariwal's alpha_bar(t) = f(t) / f(0), t = 0..K, in float64."""
    t = np.arange(denoising_steps + 1, dtype=np.float64)
    f = np.cos((t / denoising_steps + s) / (1 + s) * np.pi / 2) ** 2
    return f / f[0]


def numpy_betas(denoising_steps):
    alphas_cumprod = numpy_alphas_cumprod(denoising_steps)
    return np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0.0, 0.999)


# ---- schedule --------------------------------------------------------------------------------
@pytest.mark.parametrize("denoising_steps", [5, 20, 100])
def test_cosine_schedule_matches_nichol_dhariwal(denoising_steps):
    betas = cosine_beta_schedule(denoising_steps)
    assert betas.dtype == torch.float64 and betas.shape == (denoising_steps,)
    np.testing.assert_allclose(betas.numpy(), numpy_betas(denoising_steps), rtol=1e-12, atol=1e-15)
    assert betas.min() >= 0 and betas.max() <= 0.999
    assert betas[-1] == 0.999, "alpha_bar(K) = 0 makes the last beta 1, which is clipped to 0.999"
    assert torch.all(betas[1:] >= betas[:-1]), "cosine betas grow with t"


def test_ddim_timesteps_and_errors():
    assert ddim_timesteps(10, 5).tolist() == [0, 2, 4, 6, 8]
    assert ddim_timesteps(20, 5).tolist() == [0, 4, 8, 12, 16]
    assert ddim_timesteps(7, 7).tolist() == list(range(7))
    for bad in (0, 11):
        with pytest.raises(ValueError, match="ddim_steps"):
            ddim_timesteps(10, bad)
    with pytest.raises(ValueError, match="ddim_steps"):
        make_model(use_ddim=True)


def test_buffers_match_float64_schedule():
    model = make_model()
    betas = numpy_betas(K)
    alphas_cumprod = np.cumprod(1 - betas)
    np.testing.assert_allclose(model.alphas_cumprod.numpy(), alphas_cumprod, rtol=1e-6)
    np.testing.assert_allclose(model.alphas_cumprod_prev.numpy(), np.r_[1.0, alphas_cumprod[:-1]], rtol=1e-6)
    unclipped = numpy_alphas_cumprod(K)[1:]
    np.testing.assert_allclose(model.alphas_cumprod.numpy()[:-1], unclipped[:-1], rtol=1e-5)
    np.testing.assert_allclose(model.alphas_cumprod[-1].item(), unclipped[-2] * (1 - 0.999), rtol=1e-5)


# ---- forward process -------------------------------------------------------------------------
def test_q_sample_closed_form():
    model = make_model()
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(K, TA, DA, generator=gen) * 2 - 1
    noise = torch.randn(K, TA, DA, generator=gen)
    t = torch.arange(K)
    abar = torch.as_tensor(np.cumprod(1 - numpy_betas(K)))[:, None, None]
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    torch.testing.assert_close(model.q_sample(x0, t, noise).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [0, 4, 9])
def test_q_sample_empirical_moments(t):
    model = make_model()
    n = 20000
    gen = torch.Generator().manual_seed(3)
    x0 = (torch.rand(1, TA, DA, generator=gen) * 2 - 1).expand(n, TA, DA)
    noise = torch.randn(n, TA, DA, generator=gen)
    x_t = model.q_sample(x0, torch.full((n,), t), noise)
    abar = float(np.cumprod(1 - numpy_betas(K))[t])
    torch.testing.assert_close(x_t.mean(0), math.sqrt(abar) * x0[0], atol=0.03, rtol=0)
    torch.testing.assert_close(x_t.var(0), torch.full((TA, DA), 1 - abar), rtol=0.06, atol=0)


# ---- posterior and x0 ------------------------------------------------------------------------
def test_q_posterior_matches_ddpm_formulas():
    model = make_model()
    gen = torch.Generator().manual_seed(4)
    x0 = torch.rand(K, TA, DA, generator=gen) * 2 - 1
    x_t = torch.randn(K, TA, DA, generator=gen)
    t = torch.arange(K)
    mean, log_var = model.q_posterior(x0, x_t, t)

    betas = numpy_betas(K)
    abar = np.cumprod(1 - betas)
    abar_prev = np.r_[1.0, abar[:-1]]
    coef_x0 = np.sqrt(abar_prev) * betas / (1 - abar)
    coef_xt = np.sqrt(1 - betas) * (1 - abar_prev) / (1 - abar)
    variance = betas * (1 - abar_prev) / (1 - abar)

    def as_b(v):
        return torch.as_tensor(v)[:, None, None]

    expected_mean = as_b(coef_x0) * x0.double() + as_b(coef_xt) * x_t.double()
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-5, atol=1e-6)
    assert log_var.shape == x_t.shape
    torch.testing.assert_close(log_var[1:].exp().double(), as_b(variance[1:]).expand(K - 1, TA, DA), rtol=1e-5,
                               atol=0)
    assert variance[0] == 0
    torch.testing.assert_close(log_var[0], torch.full((TA, DA), math.log(1e-20)))
    torch.testing.assert_close(mean[0], x0[0], msg="at t = 0 the posterior mean is x0")


@pytest.mark.parametrize("clip", [1.0, None])
def test_predict_x0_inverts_q_sample(clip):
    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(K, TA, DA, generator=gen) * 1.8 - 0.9
    noise = torch.randn(K, TA, DA, generator=gen)
    model = make_model(network=FixedOutput(noise), denoised_clip_value=clip)
    t = torch.arange(K)
    x_t = model.q_sample(x0, t, noise)
    cond = make_cond(K)
    torch.testing.assert_close(model.predict_x0(x_t, t, model.network(x_t, t, cond)), x0, atol=2e-4, rtol=0)

    mean, log_var = model.p_mean_var(x_t, t, cond, model.network)
    ref_mean, ref_log_var = model.q_posterior(x0, x_t, t)
    torch.testing.assert_close(mean, ref_mean, atol=2e-4, rtol=0)
    torch.testing.assert_close(log_var, ref_log_var)


def test_predict_x0_clips_and_x0_prediction():
    x_t = torch.full((2, TA, DA), 5.0)
    t = torch.tensor([3, 9])
    model = make_model(network=FixedOutput(torch.zeros(2, TA, DA)))
    assert torch.all(model.predict_x0(x_t, t, torch.zeros_like(x_t)) == 1.0), "x_t / sqrt(abar) > 1 is clipped"
    x0_model = make_model(network=FixedOutput(torch.zeros(2, TA, DA)), predict_epsilon=False,
                          denoised_clip_value=0.5)
    prediction = torch.linspace(-2, 2, 2 * TA * DA).view(2, TA, DA)
    torch.testing.assert_close(x0_model.predict_x0(x_t, t, prediction), prediction.clamp(-0.5, 0.5))


@pytest.mark.parametrize("deterministic", [False, True])
def test_ddim_p_mean_var_matches_float64_formula(deterministic):
    gen = torch.Generator().manual_seed(6)
    steps = 5
    x = torch.randn(steps, TA, DA, generator=gen) * 1.5
    eps_hat = torch.randn(steps, TA, DA, generator=gen)
    model = make_model(network=FixedOutput(eps_hat), use_ddim=True, ddim_steps=steps, ddim_eta=1.0)
    k = torch.arange(steps)
    mean, log_var = model.p_mean_var(x, k, make_cond(steps), model.network, deterministic=deterministic)

    abar = np.cumprod(1 - numpy_betas(K))
    ddim_t = np.arange(steps) * (K // steps)
    alpha = torch.as_tensor(abar[ddim_t])[:, None, None]
    alpha_prev = torch.as_tensor(np.r_[1.0, abar[ddim_t[:-1]]])[:, None, None]
    xd, ed = x.double(), eps_hat.double()
    x0 = ((xd - (1 - alpha).sqrt() * ed) / alpha.sqrt()).clamp(-1, 1)
    eps = (xd - alpha.sqrt() * x0) / (1 - alpha).sqrt()
    eta = 0.0 if deterministic else 1.0
    sigma = eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)).sqrt()
    expected_mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - sigma**2).sqrt() * eps
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean[0].double(), x0[0], rtol=1e-4, atol=1e-5, msg="last DDIM step outputs x0_hat")
    if not deterministic:
        torch.testing.assert_close(log_var[1:].exp().double(), (sigma**2)[1:].expand(steps - 1, TA, DA), rtol=1e-4,
                                   atol=0)
    assert torch.all(log_var[0] <= math.log(1e-19)), "no DDIM noise at the last step (sigma clamped at 1e-10)"


# ---- sampling --------------------------------------------------------------------------------
def test_ddim_deterministic_ignores_per_step_noise(monkeypatch):
    """Same initial noise, different seeds (so different per-step draws): identical actions for DDIM eta = 0."""
    model = make_model(use_ddim=True, ddim_steps=5)
    ddpm = make_model()
    cond, other_cond = make_cond(3), make_cond(3, seed=8)
    initial = torch.randn(3, TA, DA, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: initial.clone())

    def actions(seed, m):
        torch.manual_seed(seed)
        return m.sample(cond, deterministic=True).actions

    torch.testing.assert_close(actions(0, model), actions(123, model), rtol=0, atol=0)
    for k in range(model.sampling_steps):
        assert torch.all(model.sampling_std(torch.zeros(3, TA, DA), k, deterministic=True) == 0)
    assert not torch.equal(actions(0, ddpm), actions(123, ddpm)), "DDPM keeps std >= 1e-3 before the last step"
    assert not torch.equal(actions(0, model), model.sample(other_cond, deterministic=True).actions)


def test_ddpm_deterministic_std_zero_only_at_last_step():
    model = make_model()
    for k in range(K):
        t = model.timesteps[k]
        log_var = model.posterior_log_variance_clipped[t].expand(2, TA, DA)
        std = model.sampling_std(log_var, k, deterministic=True)
        if k == 0:
            assert torch.all(std == 0)
        else:
            assert torch.all(std >= 1e-3)
            torch.testing.assert_close(std, (0.5 * log_var).exp().clamp(min=1e-3))
    tiny = torch.full((2, TA, DA), math.log(1e-20))
    assert torch.all(model.sampling_std(tiny, 3, deterministic=True) == 1e-3)


@pytest.mark.parametrize("use_ddim", [False, True])
def test_exploring_std_at_least_min_sampling_std(use_ddim):
    kwargs = {"use_ddim": True, "ddim_steps": 5} if use_ddim else {}
    model = make_model(min_sampling_denoising_std=0.1, **kwargs)
    for k in range(model.sampling_steps):
        tiny = torch.full((2, TA, DA), math.log(1e-20))
        assert torch.all(model.sampling_std(tiny, k, deterministic=False) == 0.1)
        large = torch.full((2, TA, DA), 2 * math.log(0.5))
        torch.testing.assert_close(model.sampling_std(large, k, deterministic=False), torch.full((2, TA, DA), 0.5))


def test_exploring_sample_matches_manual_loop():
    """Re-run DDPM sampling by hand: std raised to min_sampling_denoising_std, unit noise clipped to +-randn_clip."""
    model = make_model(min_sampling_denoising_std=0.1, randn_clip_value=0.5, final_action_clip_value=0.8)
    cond = make_cond(3)
    torch.manual_seed(9)
    actions = model.sample(cond).actions
    torch.manual_seed(9)
    with torch.no_grad():
        x = torch.randn(3, TA, DA)
        for k in reversed(range(K)):
            mean, log_var = model.p_mean_var(x, torch.full((3,), k), cond, model.network)
            std = (0.5 * log_var).exp().clamp(min=0.1)
            x = mean + std * torch.randn_like(x).clamp(-0.5, 0.5)
        x = x.clamp(-0.8, 0.8)
    torch.testing.assert_close(actions, x)


@pytest.mark.parametrize("use_ddim", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_chain_shape_last_entry_and_final_clip(use_ddim, deterministic):
    kwargs = {"use_ddim": True, "ddim_steps": 5} if use_ddim else {}
    model = make_model(final_action_clip_value=0.3, **kwargs)
    torch.manual_seed(10)
    out = model.sample(make_cond(6), deterministic=deterministic, chain_steps=3)
    assert out.chains.shape == (6, 4, TA, DA)
    assert torch.equal(out.chains[:, -1], out.actions)
    assert out.actions.abs().max() <= 0.3
    assert model.sample(make_cond(6), chain_steps=0).chains is None
    full = model.sample(make_cond(6), chain_steps=model.sampling_steps).chains
    assert full.shape == (6, model.sampling_steps + 1, TA, DA)
    with pytest.raises(ValueError, match="chain_steps"):
        model.sample(make_cond(6), chain_steps=model.sampling_steps + 1)


def test_ddim_deterministic_chain_entries_are_step_means():
    """Chain entry j + 1 is the output of step index C - 1 - j applied to entry j."""
    model = make_model(use_ddim=True, ddim_steps=5, final_action_clip_value=None)
    cond = make_cond(2)
    torch.manual_seed(11)
    chains = model.sample(cond, deterministic=True, chain_steps=4).chains
    for j in range(4):
        k = torch.full((2,), 3 - j)
        mean, _ = model.p_mean_var(chains[:, j], k, cond, model.network, deterministic=True)
        torch.testing.assert_close(chains[:, j + 1], mean)


# ---- networks --------------------------------------------------------------------------------
def test_diffusion_mlp_shapes_and_cond_error():
    net = tiny_mlp()
    out = net(torch.randn(5, TA, DA), torch.randint(0, K, (5,)), make_cond(5))
    assert out.shape == (5, TA, DA)
    with pytest.raises(ValueError, match=f"cond_steps \\* obs_dim = {TO * DO}.*got {DO}"):
        net(torch.randn(5, TA, DA), torch.randint(0, K, (5,)), {"state": torch.randn(5, 1, DO)})


def test_residual_mlp_dims():
    for bad in ([64, 64], [64, 32, 64], [64, 64, 64, 64]):
        with pytest.raises(ValueError, match="odd number of equal hidden widths"):
            ResidualMLP(3, bad, 2)
    assert len(ResidualMLP(3, [16], 2).blocks) == 0
    assert len(ResidualMLP(3, [16, 16, 16], 2).blocks) == 1
    assert len(ResidualMLP(3, [16] * 5, 2).blocks) == 2
    assert ResidualMLP(3, [16, 16, 16], 2)(torch.randn(4, 3)).shape == (4, 2)
    assert MLP(3, [16, 8], 2)(torch.randn(4, 3)).shape == (4, 2)


def test_tanh_activation_equals_torch_tanh_and_its_gradient():
    """The CPU Tanh (2 sigmoid(2x) - 1) is tanh to float32 rounding, saturates to +-1, and back-propagates
    g (1 - tanh(x)^2), in float32 and bfloat16."""
    x = torch.cat([torch.linspace(-30, 30, 4001), torch.tensor([0.0, 1e-8, -1e-8, 88.0, -88.0])]).requires_grad_()
    y = Tanh()(x)
    torch.testing.assert_close(y, torch.tanh(x), atol=2.5e-7, rtol=0)
    assert y[-2] == 1 and y[-1] == -1
    (grad,) = torch.autograd.grad(y, x, torch.linspace(-1, 1, x.numel()))
    (expected,) = torch.autograd.grad(torch.tanh(x), x, torch.linspace(-1, 1, x.numel()))
    torch.testing.assert_close(grad, expected, atol=5e-7, rtol=0)
    half = x.detach().bfloat16()
    torch.testing.assert_close(Tanh()(half).float(), torch.tanh(half).float(), atol=8e-3, rtol=0)


def test_residual_block_is_identity_plus_residual():
    torch.manual_seed(12)
    net = ResidualMLP(3, [8, 8, 8], 2, activation="ReLU")
    block = net.blocks[0]
    h = torch.randn(4, 8)
    expected = h + block.fc2(torch.relu(block.fc1(torch.relu(h))))
    torch.testing.assert_close(block(h), expected)


# ---- behaviour cloning -----------------------------------------------------------------------
def test_training_reduces_denoising_loss_tenfold():
    model = make_model(network=tiny_mlp((64, 64, 64)))
    n_chunks = 4
    actions = torch.rand(n_chunks, TA, DA) * 2 - 1
    cond = make_cond(n_chunks, seed=14)
    gen = torch.Generator().manual_seed(15)
    eval_t = torch.randint(0, K, (16, n_chunks), generator=gen)
    eval_noise = torch.randn(16, n_chunks, TA, DA, generator=gen)

    def fixed_draw_loss():
        with torch.no_grad():
            losses = [F.mse_loss(model.network(model.q_sample(actions, t, noise), t, cond), noise)
                      for t, noise in zip(eval_t, eval_noise)]
        return torch.stack(losses).mean().item()

    initial = fixed_draw_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch_actions = actions.repeat(32, 1, 1)
    batch_cond = {"state": cond["state"].repeat(32, 1, 1)}
    for _ in range(200):
        loss = model.bc_loss(batch_actions, batch_cond)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_draw_loss() < initial / 10


def test_embedding_each_distinct_step_once_gives_the_rows_and_gradients_of_embedding_every_row():
    torch.manual_seed(0)
    embedding = time_embedding_mlp(16, hidden_mult=2)
    t = torch.arange(9, -1, -1).repeat(50)  # a minibatch of 50 samples x 10 denoising steps
    once = embed_distinct_steps(embedding, t)
    (once * torch.linspace(-1, 1, 16)).sum().backward()
    grads_once = [p.grad.clone() for p in embedding.parameters()]
    embedding.zero_grad()
    every_row = embedding(t)
    (every_row * torch.linspace(-1, 1, 16)).sum().backward()
    torch.testing.assert_close(once, every_row, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_once, (p.grad for p in embedding.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_ddim", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_sampling_from_the_noise_the_sampler_would_draw_gives_its_chunk(use_ddim, deterministic):
    """sample(noise=x_S) with x_S the sampler's own first draw reproduces the chunk of sample() (the later draws
    follow in the same order); the chunk depends on that noise."""
    model = make_model(use_ddim=use_ddim, ddim_steps=5 if use_ddim else None, ddim_eta=1.0)
    cond = make_cond(6)
    torch.manual_seed(3)
    drawn = model.sample(cond, deterministic=deterministic).actions
    torch.manual_seed(3)
    noise = torch.randn(6, TA, DA)
    given = model.sample(cond, deterministic=deterministic, noise=noise).actions
    torch.testing.assert_close(given, drawn, atol=0, rtol=0)
    other = model.sample(cond, deterministic=deterministic, noise=noise + 1).actions
    assert not torch.allclose(other, given)


def test_ddim_deterministic_decoding_is_a_function_of_the_noise():
    """DDIM with eta 0 (evaluation, DSRL's decoder): the same noise gives the same chunk, whatever the RNG state."""
    model = make_model(use_ddim=True, ddim_steps=5)
    cond, noise = make_cond(6), torch.randn(6, TA, DA, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    first = model.act(cond, noise=noise)
    torch.manual_seed(1)
    torch.testing.assert_close(model.act(cond, noise=noise), first, atol=0, rtol=0)
    assert model.decodes_noise
