"""One DSRL gradient step of this project's agent equals the reference's (tests/data/reference_dsrl.pt, made by
script/reference/make_dsrl_fixture.py; see script/reference/README.md, "DSRL"): DSRL-SAC's critic, actor and entropy
temperature updates equal Stable-Baselines3's SAC; DSRL-NA's action-critic TD targets, noise-critic distillation
and updates equal the reference's `dsrl.py` logic. Same weights, same batch, same random draws; 1e-5."""

import os

import hydra
import torch
from conftest import compose_config
from reference_weights_dsrl import critic_ensemble_state, noise_actor_state
from toy import toy_overrides

import agent.finetune.dsrl as dsrl_agent
from dppo.config import validate_config
from model.rl.dsrl import TANH_EPS, squashed_gaussian_sample

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
REFERENCE = torch.load(os.path.join(DATA, "reference_dsrl.pt"), weights_only=True)
TOL = dict(atol=1e-5, rtol=1e-5)
INSIDE = 0.99  # |u| below which torch's atanh-based density is accurate in float32
FLOAT_TOL = 1e-4
HISTOGRAM_TOL = dict(atol=0.02, rtol=0.03)  # 200k draws in bins of 0.1: a few percent of sampling error


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), **TOL)


def build_agent(variant: str, tmp_path):
    s = REFERENCE["settings"]
    dims = f"[{','.join(map(str, s['mlp_dims']))}]"
    overrides = toy_overrides("null", tmp_path) + [
        f"train.variant={variant}", "precision=fp32", "env.n_envs=1", f"train.batch_size={s['batch_size']}",
        f"critic.mlp_dims={dims}", f"noise_actor.mlp_dims={dims}", f"denoising_steps={s['denoising_steps']}",
        f"ddim_steps={s['ddim_steps']}", f"model.network.mlp_dims={s['policy_mlp_dims']}",
        f"train.action_magnitude={s['action_magnitude']}", f"train.gamma={s['gamma']}", f"train.tau={s['tau']}",
        f"train.actor_lr={s['lr']}", f"train.critic_lr={s['lr']}", f"train.target_entropy={s['target_entropy']}"]
    cfg = compose_config("ft_dsrl_diffusion_mlp", overrides)
    validate_config(cfg)
    return hydra.utils.get_class(cfg._target_)(cfg)


def load_reference(agent, before: dict) -> None:
    agent.noise_actor.load_state_dict(noise_actor_state(before["actor"]))
    agent.critic.load_state_dict(critic_ensemble_state(before["critic"]))
    agent.critic_target.load_state_dict(critic_ensemble_state(before["critic_target"]))
    agent.temperature.log_alpha.data.copy_(before["log_ent_coef"][0])
    if "noise_critic" in before:
        agent.noise_critic.load_state_dict(critic_ensemble_state(before["noise_critic"]))


def agent_batch(batch: dict, settings: dict) -> dict:
    """The fixture's batch as the replay gives it: obs {"state": (B, 1, obs_dim)}, noise and chunks (B, Ta, Da)."""
    chunk_shape = (-1, settings["horizon_steps"], settings["action_dim"])
    return {"obs": {"state": batch["obs"][:, None]}, "next_obs": {"state": batch["next_obs"][:, None]},
            "actions": batch["chunks"].reshape(chunk_shape), "stored": {"noise": batch["noise"].reshape(chunk_shape)},
            "rewards": batch["rewards"], "terminated": batch["dones"].bool()}


def assert_weights(agent, after: dict) -> None:
    close_states(agent.noise_actor.state_dict(), noise_actor_state(after["actor"]))
    close_states(agent.critic.state_dict(), critic_ensemble_state(after["critic"]))
    close_states(agent.critic_target.state_dict(), critic_ensemble_state(after["critic_target"]))
    close(agent.temperature.log_alpha, after["log_ent_coef"][0])
    if "noise_critic" in after:
        close_states(agent.noise_critic.state_dict(), critic_ensemble_state(after["noise_critic"]))


def close_states(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in actual:
        close(actual[key], expected[key])


def test_dsrl_sac_step_equals_stable_baselines3_sac(tmp_path):
    case, settings = REFERENCE["sac"], REFERENCE["settings"]
    agent = build_agent("sac", tmp_path)
    try:
        load_reference(agent, case["before"])
        torch.manual_seed(case["seed"])
        metrics = agent.gradient_step(agent_batch(REFERENCE["batch"], settings))
    finally:
        agent.venv.close()
    close(metrics["critic_loss"], case["critic_loss"])
    close(metrics["actor_loss"], case["actor_loss"])
    close(metrics["temperature_loss"], case["ent_coef_loss"])
    close(metrics["temperature"], case["ent_coef"])
    assert_weights(agent, case["after"])
    assert not torch.equal(agent.critic.weights[0], critic_ensemble_state(case["before"]["critic"])["weights.0"])


def test_dsrl_na_step_equals_the_reference(tmp_path, monkeypatch):
    case, settings = REFERENCE["na"], REFERENCE["settings"]
    agent = build_agent("na", tmp_path)
    try:
        agent.model.network.load_state_dict(case["policy_network"])
        agent.model.actor_ft.load_state_dict(case["policy_network"])
        load_reference(agent, case["before"])
        recorded = record_calls(monkeypatch, agent)
        torch.manual_seed(case["seed"])
        metrics = agent.gradient_step(agent_batch(REFERENCE["batch"], settings))
        noise_metrics = agent.noise_critic_step(agent_batch(REFERENCE["noise_batch"], settings))
    finally:
        agent.venv.close()
    close(recorded["soft_td_targets"][0], case["td_targets"])
    close(recorded["critic_regression_loss"][-1][1], case["distillation_targets"])  # the noise critic's (q, targets)
    close(metrics["critic_loss"], case["critic_loss"])
    close(metrics["actor_loss"], case["actor_loss"])
    close(metrics["temperature_loss"], case["ent_coef_loss"])
    close(noise_metrics["noise_critic_loss"], case["noise_critic_loss"])
    assert_weights(agent, case["after"])


def record_calls(monkeypatch, agent) -> dict:
    """{name: [output of each call]} of the agent's soft_td_targets, and {name: [positional arguments of each
    call]} of its critic_regression_loss (the critic's, then the noise critic's (q, targets))."""
    recorded = {"soft_td_targets": [], "critic_regression_loss": []}
    soft_td_targets, critic_regression_loss = dsrl_agent.soft_td_targets, dsrl_agent.critic_regression_loss

    def recording_targets(*args):
        recorded["soft_td_targets"].append(soft_td_targets(*args))
        return recorded["soft_td_targets"][-1]

    def recording_loss(*args):
        recorded["critic_regression_loss"].append(args)
        return critic_regression_loss(*args)
    monkeypatch.setattr(dsrl_agent, "soft_td_targets", recording_targets)
    monkeypatch.setattr(dsrl_agent, "critic_regression_loss", recording_loss)
    return recorded


def test_the_squashed_gaussian_log_prob_is_the_density_of_the_squashed_draws():
    """log pi(u) with its tanh correction against torch's TransformedDistribution (tanh of a Normal) and against a
    histogram of 200k draws; a log-prob without the correction misses both."""
    torch.manual_seed(0)
    mean, log_std = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.0, -0.5]])
    u, log_prob = squashed_gaussian_sample(mean.expand(200_000, 2), log_std.expand(200_000, 2))
    exact = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()])
    inside = (u.abs() < INSIDE).all(-1)  # TANH_EPS moves each term by at most TANH_EPS / (1 - INSIDE^2) there
    torch.testing.assert_close(log_prob[inside], exact.log_prob(u).sum(-1)[inside],
                               atol=2 * TANH_EPS / (1 - INSIDE**2) + FLOAT_TOL, rtol=0)
    # histogram of the first coordinate against exp(log pi) of its marginal
    edges = torch.linspace(-0.9, 0.9, 19)
    centers = (edges[1:] + edges[:-1]) / 2
    counts = torch.histc(u[:, 0], bins=18, min=-0.9, max=0.9)
    empirical = counts / (len(u) * (edges[1] - edges[0]))
    z = torch.atanh(centers)
    marginal = torch.distributions.Normal(0.3, 1.0).log_prob(z) - torch.log(1 - centers**2)
    torch.testing.assert_close(empirical, marginal.exp(), **HISTOGRAM_TOL)
    no_correction = torch.distributions.Normal(0.3, 1.0).log_prob(z).exp()
    assert (no_correction - empirical).abs().max() > 5 * HISTOGRAM_TOL["atol"]
