"""Mixed precision (dppo/precision.py): the default, float32 outputs, bf16 against fp32 on a fixed batch, and the
ratio of a fresh minibatch under bf16."""

import pytest
import torch
from conftest import compose_config, finetune_overrides

import dppo.precision as precision
from agent.finetune.ppo import PPOAgent
from dppo.config import ConfigError, validate_config
from model.common.mlp import MLP, ResidualMLP
from model.rl.ppo import normalize_advantages, ppo_loss


@pytest.mark.parametrize("flags, device, expected", [
    ({"avx512f", "avx512_bf16"}, "cpu", "bf16"),
    ({"amx_bf16", "amx_tile"}, "cpu", "bf16"),
    ({"avx2", "avx512f"}, "cpu", "fp32"),
    (set(), "cpu", "fp32"),
])
def test_default_precision_follows_the_hardware(monkeypatch, flags, device, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.default_precision(device) == expected


def test_config_records_the_precision_and_refuses_an_unknown_one(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    cfg = compose_config("ft_ppo_diffusion_mlp", [f"logdir={tmp_path}", "device=cpu"])
    assert cfg.precision == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    assert cfg.precision == "fp32"  # resolved when read: config.yaml is saved resolved, so it records the value
    cfg = compose_config("ft_ppo_diffusion_mlp", [f"logdir={tmp_path}", "precision=fp16"])
    with pytest.raises(ConfigError, match="precision=fp16 is out of range: the update's precision .* must be one of fp32, bf16"):
        validate_config(cfg)


@pytest.mark.parametrize("mlp_class", [MLP, ResidualMLP])
def test_networks_output_float32_under_bf16_autocast(mlp_class):
    torch.manual_seed(0)
    mlp = mlp_class(6, [32, 32, 32], 3)
    x = torch.randn(5, 6)
    with precision.autocast("bf16", "cpu"):
        out = mlp(x)
        hidden = mlp.layers[0](x) if mlp_class is MLP else mlp.input_layer(x)
    assert hidden.dtype == torch.bfloat16, "the hidden layers do run in bf16"
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mlp(x), rtol=0.05, atol=0.02)


def make_agent(pretrained, tmp_path, name, precision_setting, extra=()):
    dataset_dir, _ = pretrained
    overrides = finetune_overrides(dataset_dir, tmp_path / name, n_train_itr=1)
    return PPOAgent(compose_config("ft_ppo_diffusion_mlp", overrides + [f"precision={precision_setting}", *extra]))


def fixed_batch(model, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(batch, model.cond_steps, model.obs_dim, generator=gen)}
    with torch.no_grad():
        _, stored = model.explore(obs)
        old = model.log_probs(obs, stored) + 0.003 * torch.randn(batch, model.ft_denoising_steps, generator=gen)
    returns, values, advantages = (torch.randn(batch, generator=gen) for _ in range(3))
    return obs, stored, returns, values, advantages, old


def test_bf16_losses_and_gradients_agree_with_fp32_on_a_fixed_batch(pretrained, tmp_path):
    """The same weights and batch through both paths. Stated tolerances (measured on the shipped Hopper policy,
    512-wide: log-probs differ by 7.6e-4 on average, 7.3e-3 at most; actor gradients have cosine 0.995): log-probs
    1e-2 at most; value loss 1e-3 relative; actor and critic gradients cosine >= 0.98, norms within 5%."""
    agents = {p: make_agent(pretrained, tmp_path, p, p) for p in ("fp32", "bf16")}
    agents["bf16"].model.load_state_dict(agents["fp32"].model.state_dict())
    agents["bf16"].critic.load_state_dict(agents["fp32"].critic.state_dict())
    obs, stored, returns, values, advantages, old = fixed_batch(agents["fp32"].model, 64)
    results = {}
    for name, agent in agents.items():
        agent.model.zero_grad()
        agent.critic.zero_grad()
        with agent.autocast():
            out = ppo_loss(agent.model, agent.critic, obs, stored, returns, values,
                           normalize_advantages(advantages, agent.settings), old, agent.settings)
            log_probs = agent.model.log_probs(obs, stored)
        (out.pg_loss + out.v_loss).backward()
        actor_grad = torch.cat([p.grad.flatten() for p in agent.model.actor_parameters()])
        critic_grad = torch.cat([p.grad.flatten() for p in agent.critic.parameters()])
        results[name] = out, log_probs, actor_grad, critic_grad
    (out32, lp32, actor32, critic32), (out16, lp16, actor16, critic16) = results["fp32"], results["bf16"]
    assert lp16.dtype == torch.float32
    assert 0 < (lp16 - lp32).abs().max() < 1e-2, "bf16 did run, within its tolerance"
    assert out16.v_loss.item() == pytest.approx(out32.v_loss.item(), rel=1e-3)
    for grad16, grad32 in ((actor16, actor32), (critic16, critic32)):
        assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) >= 0.98
        assert grad16.norm().item() == pytest.approx(grad32.norm().item(), rel=0.05)


def test_bf16_update_starts_every_minibatch_at_ratio_one(pretrained, tmp_path):
    """With frozen weights (learning rates 0), every minibatch of a bf16 update is fresh: ratio 1, approx_kl 0 and
    clipfrac 0, since the old log-probs are recomputed on the loss's bf16 path. Float32 log-probs (a float32
    sampler's) would not do: against them the ratio leaves the bounds (on the shipped 512-wide policy, log-probs differ
    by up to 7e-3, beyond DPPO's clip coefficients of 1e-3 to 1e-2)."""
    agent = make_agent(pretrained, tmp_path, "bf16", "bf16", ["train.actor_lr=0", "train.critic_lr=0",
                                                              "train.update_epochs=3"])
    rollout, _, _ = agent.collect_rollout(agent.reset_envs())
    metrics = agent.update(rollout)
    assert metrics["minibatch_updates"] == 6
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-7)
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["clipfrac"] == 0.0

    obs = {key: value.flatten(0, 1) for key, value in rollout.obs.items()}
    stored = {key: value.flatten(0, 1) for key, value in rollout.stored.items()}
    n = obs["state"].shape[0]
    with torch.no_grad():
        float32_log_probs = agent.model.log_probs(obs, stored)  # what a float32 sampler stores
    with agent.autocast():
        against_float32 = ppo_loss(agent.model, agent.critic, obs, stored, torch.zeros(n), torch.zeros(n),
                                   torch.randn(n), float32_log_probs, agent.settings)
    assert against_float32.approx_kl > 1e-8 and abs(against_float32.ratio - 1) > 1e-7  # outside the bounds above
