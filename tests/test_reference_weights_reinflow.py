"""ReinFlow's flow-policy weights in this project's modules, and ReinFlow's chain math replayed from its outputs.

tests/data/reference_reinflow.pt holds what ReinFlow's own code computed (script/reference/make_reinflow_fixture.py,
keys in script/reference/README_reinflow.md): a small PPOFlow with its Hopper options, its weights, recorded
Gaussian draws, the sampled chains, log-probabilities, entropy and PPO loss terms. The velocity network is loaded
into DiffusionMLP and the noise network into model.common.mlp.MLP (tests/reference_weights_reinflow.py); the
chains and log-probabilities are then rebuilt from those modules with ReinFlow's formulas, written out here.
"""

import math
import os

import pytest
import torch
from reference_weights_reinflow import noise_mlp_state_dict, sigma_bounds, squash_to_sigma, velocity_state_dict
from tolerances import FLOAT32_EPS, approx_kl_atol

from model.common.mlp import MLP
from model.diffusion.mlp import DiffusionMLP
from model.flow.flow import TIME_SCALE, FlowModel

REFERENCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference_reinflow.pt")
FORWARD_ATOL = 1e-6
CHAIN_ATOL = 1e-5
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE_PATH, weights_only=True)


@pytest.fixture(scope="module")
def velocity_net(reference):
    cfg = reference["config"]
    net = DiffusionMLP(action_dim=cfg["action_dim"], horizon_steps=cfg["horizon_steps"],
                       cond_dim=cfg["obs_dim"] * cfg["cond_steps"], time_dim=cfg["time_dim"], mlp_dims=cfg["mlp_dims"],
                       activation=cfg["velocity_activation"], residual_style=True)
    net.load_state_dict(velocity_state_dict(reference["state_dict"], "actor_ft.policy."), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def noise_mlp(reference):
    cfg = reference["config"]
    mlp = MLP(cfg["time_dim"] + cfg["obs_dim"] * cfg["cond_steps"], cfg["noise_hidden_dims"],
              cfg["horizon_steps"] * cfg["action_dim"], activation=cfg["explore_net_activation_type"])
    mlp.load_state_dict(noise_mlp_state_dict(reference["state_dict"], "actor_ft."), strict=True)
    return mlp.eval()


def noise_std(velocity_net, noise_mlp, t, state, bounds):
    """ReinFlow's sigma(s, t): (B, Ta*Da) from the velocity network's time embedding and the flattened state."""
    features = torch.cat([velocity_net.time_embedding(t), state.reshape(state.shape[0], -1)], dim=-1)
    return squash_to_sigma(noise_mlp(features), *bounds)


def step(velocity_net, noise_mlp, x, t, state, bounds, n_steps):
    """Mean clamp(x + v / n_steps, -1, 1) and std of ReinFlow's noisy Euler step at time t: (B, Ta, Da) each."""
    times = x.new_full((x.shape[0],), t)
    mean = (x + velocity_net(x, times, {"state": state}) / n_steps).clamp(-1, 1)
    return mean, noise_std(velocity_net, noise_mlp, times, state, bounds).view_as(x)


def chain_log_prob(velocity_net, noise_mlp, chains, state, times, bounds):
    """ReinFlow's normalized chain log-prob and entropy rate: (B,) each.

    log p = [sum log N(x_0; 0, I) + sum_k sum log N(x_{k+1}; mean_k, sigma_k^2)] / ((K + 1) Ta Da);
    H = [Ta Da HALF_LOG_2PI_E + sum_k sum (HALF_LOG_2PI_E + log sigma_k)] / ((K + 1) Ta Da).
    """
    n_elements = chains[:, 0].numel() // chains.shape[0]
    log_prob = (-0.5 * chains[:, 0] ** 2 - HALF_LOG_2PI).flatten(1).sum(-1)
    entropy = torch.full_like(log_prob, n_elements * HALF_LOG_2PI_E)
    for k, t in enumerate(times):
        mean, std = step(velocity_net, noise_mlp, chains[:, k], t, state, bounds, len(times))
        log_prob += torch.distributions.Normal(mean, std).log_prob(chains[:, k + 1]).flatten(1).sum(-1)
        entropy += (HALF_LOG_2PI_E + std.log()).flatten(1).sum(-1)
    n_terms = (len(times) + 1) * n_elements
    return log_prob / n_terms, entropy / n_terms


def test_velocity_weights_match_reinflow(reference, velocity_net):
    probe = reference["probe"]
    with torch.no_grad():
        velocity = velocity_net(probe["x"], probe["t"], {"state": probe["state"]})
        time_embedding = velocity_net.time_embedding(probe["t"])
    torch.testing.assert_close(velocity, probe["velocity"], atol=FORWARD_ATOL, rtol=0)
    torch.testing.assert_close(time_embedding, probe["time_embedding"], atol=FORWARD_ATOL, rtol=0)


def test_flow_model_reads_reinflow_weights_only_with_time_scale_one(reference, velocity_net):
    cfg, probe = reference["config"], reference["probe"]
    cond = {"state": probe["state"]}
    kwargs = dict(horizon_steps=cfg["horizon_steps"], obs_dim=cfg["obs_dim"], action_dim=cfg["action_dim"],
                  cond_steps=cfg["cond_steps"], inference_steps=cfg["inference_steps"])
    with torch.no_grad():
        unscaled = FlowModel(velocity_net, time_scale=1.0, **kwargs).velocity(probe["x"], probe["t"], cond)
        scaled = FlowModel(velocity_net, time_scale=TIME_SCALE, **kwargs).velocity(probe["x"], probe["t"], cond)
    torch.testing.assert_close(unscaled, probe["velocity"], atol=FORWARD_ATOL, rtol=0)
    assert (scaled - probe["velocity"]).abs().max() > 100 * FORWARD_ATOL


def test_noise_weights_match_reinflow(reference, velocity_net, noise_mlp):
    probe = reference["probe"]
    bounds = sigma_bounds(reference["state_dict"], "actor_ft.")
    assert bounds == pytest.approx((reference["config"]["min_std"], reference["config"]["max_std"]))
    decayed = (bounds[0], probe["decayed_sigma_max"])
    with torch.no_grad():
        sigma = noise_std(velocity_net, noise_mlp, probe["t"], probe["state"], bounds)
        sigma_decayed = noise_std(velocity_net, noise_mlp, probe["t"], probe["state"], decayed)
    torch.testing.assert_close(sigma, probe["noise_std"], atol=FORWARD_ATOL, rtol=0)
    torch.testing.assert_close(sigma_decayed, probe["noise_std_decayed"], atol=FORWARD_ATOL, rtol=0)


def test_sampled_chains_replay(reference, velocity_net, noise_mlp):
    """x_0 = eps_0 (not clipped); x_{k+1} = mean_k + sigma_k clamp(eps_k, +-3) at t_k = linspace(0, 1, K)[k];
    the last entry clamped to [-1, 1]; the stored log-prob is that of the clamped chain at the same times."""
    inputs, sample = reference["inputs"], reference["sample"]
    clip = reference["config"]["randn_clip_value"]
    bounds = sigma_bounds(reference["state_dict"], "actor_ft.")
    x = inputs["eps_x0"].view_as(sample["chains"][:, 0])
    chain, means, stds = [x], [], []
    with torch.no_grad():
        for k, t in enumerate(sample["times"].tolist()):
            mean, std = step(velocity_net, noise_mlp, x, t, inputs["state"], bounds, len(sample["times"]))
            x = mean + std * inputs["eps_steps"][:, k].clamp(-clip, clip)
            chain.append(x)
            means.append(mean)
            stds.append(std)
        chain[-1] = chain[-1].clamp(-1, 1)
        chains = torch.stack(chain, dim=1)
        log_prob, _ = chain_log_prob(velocity_net, noise_mlp, chains, inputs["state"], sample["times"].tolist(),
                                     bounds)
    torch.testing.assert_close(torch.stack(means, dim=1), sample["means"], atol=CHAIN_ATOL, rtol=0)
    torch.testing.assert_close(torch.stack(stds, dim=1), sample["stds"], atol=CHAIN_ATOL, rtol=0)
    torch.testing.assert_close(chains, sample["chains"], atol=CHAIN_ATOL, rtol=0)
    torch.testing.assert_close(log_prob, sample["log_probs"], atol=CHAIN_ATOL, rtol=0)


def test_evaluation_replays(reference, velocity_net, noise_mlp):
    """Evaluation: the same chain without step noise (x_0 still drawn), means clamped, final clamp."""
    inputs, sample = reference["inputs"], reference["sample"]
    bounds = sigma_bounds(reference["state_dict"], "actor_ft.")
    x = inputs["eps_x0"].view_as(sample["chains"][:, 0])
    with torch.no_grad():
        for t in sample["times"].tolist():
            x, _ = step(velocity_net, noise_mlp, x, t, inputs["state"], bounds, len(sample["times"]))
    torch.testing.assert_close(x.clamp(-1, 1), sample["eval_actions"], atol=CHAIN_ATOL, rtol=0)


def test_recomputed_log_probs_use_other_times(reference, velocity_net, noise_mlp):
    """get_logprobs evaluates the steps at t_k = k / K, not at the sampling times: PPO's first ratio is not 1."""
    inputs, sample, recomputed = reference["inputs"], reference["sample"], reference["log_prob"]
    bounds = sigma_bounds(reference["state_dict"], "actor_ft.")
    with torch.no_grad():
        log_prob, entropy = chain_log_prob(velocity_net, noise_mlp, sample["chains"], inputs["state"],
                                           recomputed["times"].tolist(), bounds)
    torch.testing.assert_close(log_prob, recomputed["log_probs"], atol=CHAIN_ATOL, rtol=0)
    torch.testing.assert_close(entropy, recomputed["entropy"], atol=CHAIN_ATOL, rtol=0)
    assert (recomputed["log_probs"] - sample["log_probs"]).abs().max() > 100 * CHAIN_ATOL
    assert abs(reference["first_minibatch_ratio"] - 1) > 1e-6  # ReinFlow's agent raises on this


def test_ppo_terms_formulas(reference):
    """Per-sample log-probs clamped to [-1, 1] before the ratio; minibatch-normalized advantages; clip 0.01;
    unclipped value loss; entropy_loss = -mean(entropy rate).

    The formulas are evaluated here in float64 from ReinFlow's stored float32 inputs, so the only differences left
    are ReinFlow's own float32 roundings (its exp: eps * r per ratio), which the tolerances state
    (tests/tolerances.py); a float32 recomputation would add this CPU's exp kernel to the comparison."""
    cfg, inputs, ppo = reference["config"], reference["inputs"], reference["ppo"]
    new = ppo["new_log_probs"].double().clamp(cfg["logprob_min"], cfg["logprob_max"])
    old = ppo["old_log_probs"].double().clamp(cfg["logprob_min"], cfg["logprob_max"])
    log_ratio = new - old
    ratio = log_ratio.exp()
    advantages = inputs["advantages"].double()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    clip = cfg["clip_ploss_coef"]
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    ratio_atol = FLOAT32_EPS * ratio.max().item()  # one float32 exp per ratio
    assert ppo["pg_loss"] == pytest.approx(pg_loss.item(), abs=ratio_atol * adv.abs().max().item())
    assert ppo["approx_kl"] == pytest.approx(((ratio - 1) - log_ratio).mean().item(),
                                             abs=approx_kl_atol(ratio, computations=1))
    assert ppo["clipfrac"] == pytest.approx(((ratio - 1).abs() > clip).double().mean().item())
    assert ppo["ratio"] == pytest.approx(ratio.mean().item(), abs=ratio_atol)
    values, returns = ppo["values"].double(), inputs["returns"].double()
    assert ppo["v_loss"] == pytest.approx(0.5 * ((values - returns) ** 2).mean().item(), rel=1e-6)
    assert (ppo["old_log_probs"] < cfg["logprob_min"]).any()  # the clamp is exercised


def test_schedules(reference):
    """sigma_max: 0.24 held for 35% of 1000 iterations, cosine to 0.3 * 0.10 + 0.7 * 0.24 over the rest; iteration
    i trains under the bound set after iteration i - 1. lr: 10-iteration linear warmup from min_lr, cosine to min_lr,
    restarting every 100 iterations."""
    cfg, schedule, lr = reference["config"], reference["noise_schedule"], reference["lr"]
    n, hold = cfg["n_train_itr"], cfg["n_train_itr"] * cfg["max_noise_hold_ratio"]
    start, end = cfg["max_std"], schedule["sigma_max_end"]
    assert end == pytest.approx(0.3 * cfg["min_std"] + 0.7 * cfg["max_std"])

    def sigma_max(i):
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max((i - hold) / (n - hold), 0), 1)))

    expected = torch.tensor([start] + [sigma_max(i - 1) for i in range(1, n)], dtype=torch.float64)
    torch.testing.assert_close(schedule["sigma_max_in_force"], expected)
    for role in ("actor", "critic"):
        high, low = cfg[f"{role}_lr"], cfg[f"{role}_min_lr"]
        cycle, warmup = cfg["lr_first_cycle_steps"], cfg["lr_warmup_steps"]
        phases = [i % cycle for i in range(n)]
        expected = torch.tensor([low + (high - low) * p / warmup if p < warmup else
                                 low + (high - low) * 0.5 * (1 + math.cos(math.pi * (p - warmup) / (cycle - warmup)))
                                 for p in phases], dtype=torch.float64)
        torch.testing.assert_close(lr[role], expected)
