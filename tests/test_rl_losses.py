"""Losses and pieces of the fine-tuning algorithms on hand-made batches, against values computed here independently."""

import math

import pytest
import torch
from torch import nn

from agent.finetune.evaluation import curve_panels
from agent.finetune.replay import ReplayBuffer, replay_gradient_steps
from agent.finetune.returns import episode_returns_to_go
from model.common.critic import DoubleCriticObsAct, soft_update
from model.common.gaussian import GaussianMLP, GaussianModel
from model.diffusion.diffusion_rl import FinetuneDiffusion
from model.diffusion.mlp import DiffusionMLP
from model.rl.dql import dql_actor_loss, dql_critic_loss
from model.rl.idql import CandidateSelector, expectile_loss, idql_v_loss
from model.rl.ppo import PPOSettings, clipped_policy_loss, normalize_advantages, ppo_loss, ratio_metrics, value_loss
from model.rl.weighted_regression import exponential_weights, standardize

TA, DA, DO = 2, 2, 3


def cond_of(batch, seed=0):
    return {"state": torch.randn(batch, 1, DO, generator=torch.Generator().manual_seed(seed))}


def tiny_denoiser():
    return DiffusionMLP(action_dim=DA, horizon_steps=TA, cond_dim=DO, time_dim=8, mlp_dims=[16, 16, 16])


def tiny_q():
    return DoubleCriticObsAct(cond_dim=DO, action_dim=DA, action_steps=1, mlp_dims=[16, 16, 16])


DIFFUSION_KWARGS = dict(horizon_steps=TA, obs_dim=DO, action_dim=DA, denoising_steps=5, randn_clip_value=3,
                        min_sampling_denoising_std=0.1, final_action_clip_value=None)


# ---- clipped PPO pieces ---------------------------------------------------------------------------
def test_clipped_policy_loss_value_loss_and_ratio_metrics_by_hand():
    ratio = torch.tensor([0.5, 1.05, 1.5, 0.98])
    adv = torch.tensor([1.0, -2.0, 1.0, -1.0])
    # per sample max(-A r, -A clip(r, 0.9, 1.1)): max(-0.5, -0.9) = -0.5; max(2.1, 2.1) = 2.1;
    # max(-1.5, -1.1) = -1.1; max(0.98, 0.98) = 0.98
    assert clipped_policy_loss(ratio, adv, 0.1).item() == pytest.approx((-0.5 + 2.1 - 1.1 + 0.98) / 4)
    values, returns, old = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]), torch.tensor([1.5, 2.5])
    assert value_loss(values, returns, old).item() == pytest.approx(0.5 * (1 + 9) / 2)
    # clipped: old + clip(V - old, +-0.2) = [1.3, 2.7] -> errors [0.49, 7.29]; max with [1, 9] -> [1, 9]
    assert value_loss(values, returns, old, clip=0.2).item() == pytest.approx(0.5 * (1 + 9) / 2)
    assert value_loss(torch.tensor([2.5]), torch.tensor([0.0]), torch.tensor([1.0]), clip=0.2).item() \
        == pytest.approx(0.5 * 6.25)
    metrics = ratio_metrics(ratio.log(), 0.1)
    expected_kl = sum((r - 1) - math.log(r) for r in ratio.tolist()) / 4
    assert metrics["approx_kl"] == pytest.approx(expected_kl)
    assert metrics["clipfrac"] == pytest.approx(0.5)
    normalized = normalize_advantages(torch.tensor([1.0, 2.0, 3.0]), PPOSettings())
    assert normalized.tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)


def test_gaussian_learned_std_is_one_log_variance_per_action_dim_as_the_references():
    """The reference's Gaussian_MLP learns logvar (Da,), shared by the chunk's Ta steps. Adam's first step moves a
    parameter by its learning rate, so raising the std moves every chunk step's log-std by lr / 2 (a log-std per
    chunk step, as this project had before, moved by lr)."""
    network = GaussianMLP(action_dim=DA, horizon_steps=TA, cond_dim=DO, mlp_dims=[16, 16, 16], fixed_std=0.1,
                          learn_fixed_std=True, std_min=0.01, std_max=0.2)
    assert [name for name, _ in network.named_parameters() if not name.startswith("mean_net.")] == ["logvar"]
    cond, lr = cond_of(4), 1e-2
    optimizer = torch.optim.Adam([network.logvar], lr=lr)
    _, std = network(cond)
    (-std.sum()).backward()
    optimizer.step()
    _, new_std = network(cond)
    torch.testing.assert_close((new_std / std).log(), torch.full((4, TA, DA), lr / 2), atol=1e-6, rtol=0)


def test_gaussian_ppo_log_probs_and_loss_against_torch_distributions():
    torch.manual_seed(0)
    network = GaussianMLP(action_dim=DA, horizon_steps=TA, cond_dim=DO, mlp_dims=[16, 16, 16], fixed_std=0.1,
                          learn_fixed_std=True, std_min=0.01, std_max=0.2)
    model = GaussianModel(network=network, horizon_steps=TA, obs_dim=DO, action_dim=DA, final_action_clip_value=None)
    assert torch.allclose((0.5 * network.logvar).exp(), torch.full((DA,), 0.1)), "the learned std starts at BC's 0.1"
    cond = cond_of(4)
    actions, stored = model.explore(cond)
    assert torch.equal(stored["actions"], actions)
    mean, std = network(cond)
    expected = torch.distributions.Normal(mean, std).log_prob(actions).mean(dim=(-2, -1)).clamp(-5, 2)
    torch.testing.assert_close(model.log_probs(cond, stored), expected[:, None])
    torch.testing.assert_close(stored["log_probs"], expected[:, None])

    old_log_probs = expected[:, None] - torch.tensor([[0.5], [-0.5], [0.01], [0.0]])  # ratios e^0.5, e^-0.5, e^0.01, 1
    advantages = torch.tensor([1.0, 2.0, 3.0, 4.0])
    settings = PPOSettings(clip_ploss_coef=0.1)
    adv = normalize_advantages(advantages, settings)
    out = ppo_loss(model, FixedV(0.0), cond, stored, torch.zeros(4), torch.zeros(4), adv, old_log_probs, settings)
    ratio = torch.tensor([0.5, -0.5, 0.01, 0.0]).exp()
    want = torch.max(-adv * ratio, -adv * ratio.clamp(0.9, 1.1)).mean()
    assert out.pg_loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert out.clipfrac == pytest.approx(0.5)
    # the entropy term acts (the reference returns minus the mean Normal entropy); a flipped sign would fail
    assert out.entropy_loss.item() == pytest.approx(-torch.distributions.Normal(mean, std).entropy().mean().item())


# ---- weighted regression (DRWR, DAWR) ---------------------------------------------------------------
def test_exponential_weights_are_clipped_and_detached():
    scores = torch.tensor([-1.0, 0.0, 0.2, 1.0], requires_grad=True)
    weights = exponential_weights(scores, beta=10, max_weight=100)
    assert weights.tolist() == pytest.approx([math.exp(-10), 1.0, math.exp(2), 100.0])
    assert not weights.requires_grad
    assert standardize(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)],
                                                                           rel=1e-5)


def test_episode_returns_to_go_only_for_episodes_inside_the_rollout():
    # env 0: an episode running when the rollout starts ends at t=1, a new one runs t=2..3 and ends at t=3
    # env 1: starts at t=0, never ends
    rewards = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    ends = torch.tensor([[False, False], [True, False], [False, False], [True, False]])
    firsts = torch.tensor([[False, True], [False, False], [True, False], [False, False]])
    returns, complete = episode_returns_to_go(rewards, ends, firsts, torch.zeros_like(ends), gamma=0.5)
    assert complete.tolist() == [[False, False], [False, False], [True, False], [True, False]]
    assert returns[2, 0].item() == pytest.approx(3 + 0.5 * 4)  # gamma ** (t' - t)
    assert returns[3, 0].item() == pytest.approx(4.0)
    assert returns[0, 0].item() == pytest.approx(1 + 0.5 * 2)  # stops at the episode's end


# ---- replay ---------------------------------------------------------------------------------------
def steps(start, n, n_envs=2, cut=None):
    t = torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, n_envs)
    return {"obs": {"state": t[..., None, None].expand(n, n_envs, 1, DO).clone()}, "rewards": t + 0.5,
            "cut": torch.zeros(n, n_envs, dtype=torch.bool) if cut is None else cut}


def test_replay_keeps_the_newest_steps_in_time_order_and_round_trips():
    replay = ReplayBuffer(capacity=5, n_envs=2, device="cpu")
    replay.add(steps(0, 3))
    replay.add(steps(3, 4))  # 7 steps into 5 rows: steps 2..6 remain
    assert len(replay) == 10
    assert replay.ordered()["rewards"][:, 0].tolist() == [2.5, 3.5, 4.5, 5.5, 6.5]
    assert replay.ordered()["obs"]["state"].shape == (5, 2, 1, DO)
    replay.add(steps(7, 8))  # more than the capacity at once: the newest 5
    assert replay.ordered()["rewards"][:, 1].tolist() == [10.5, 11.5, 12.5, 13.5, 14.5]

    batch = replay.sample(64)
    assert batch["obs"]["state"].shape == (64, 1, DO)
    assert torch.equal(batch["obs"]["state"][:, 0, 0] + 0.5, batch["rewards"]), "fields of one sample stay aligned"
    assert batch["rewards"].min() >= 10.5

    restored = ReplayBuffer(capacity=5, n_envs=2, device="cpu")
    restored.load_state_dict(replay.state_dict())
    assert torch.equal(restored.ordered()["rewards"], replay.ordered()["rewards"])
    with pytest.raises(ValueError, match="buffer_size"):
        ReplayBuffer(capacity=6, n_envs=2, device="cpu").load_state_dict(replay.state_dict())
    assert replay_gradient_steps(20000, 1000, 64) == 1280


def test_replay_never_draws_a_cut_step():
    replay = ReplayBuffer(capacity=4, n_envs=2, device="cpu")
    cut = torch.tensor([[False, True], [True, False], [False, False]])
    replay.add(steps(0, 3, cut=cut))
    drawn = replay.sample(500)
    pairs = {(r - 0.5, int(s)) for r, s in zip(drawn["rewards"].tolist(), drawn["cut"].tolist())}
    assert not drawn["cut"].any()
    assert {r for r, _ in pairs} == {0.0, 1.0, 2.0}, "every step with a step that happened is drawn"
    replay.add(steps(3, 3))  # the cut rows are overwritten: every stored step is drawable
    assert replay.sample(500)["rewards"].min() >= 2.5


# ---- DQL ------------------------------------------------------------------------------------------
def make_policy(**kwargs):
    torch.manual_seed(0)
    return FinetuneDiffusion(network=tiny_denoiser(), **DIFFUSION_KWARGS, **kwargs)


def test_dql_critic_targets_use_the_target_critic_and_a_fresh_policy_action():
    policy, critic, critic_target = make_policy(), tiny_q(), tiny_q()
    cond, next_cond = cond_of(6, 1), cond_of(6, 2)
    batch = {"obs": cond, "next_obs": next_cond, "actions": torch.randn(6, TA, DA),
             "rewards": torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5, 0.0]),
             "terminated": torch.tensor([False, True, False, False, True, False])}
    torch.manual_seed(5)
    loss = dql_critic_loss(policy, critic, critic_target, batch, gamma=0.9, act_steps=1)
    torch.manual_seed(5)
    with torch.no_grad():
        next_actions = policy.sample(next_cond).actions
        q1_next, q2_next = critic_target(next_cond, next_actions[:, :1])
        targets = batch["rewards"] + 0.9 * torch.where(batch["terminated"], 0.0, torch.min(q1_next, q2_next))
        q1, q2 = critic(cond, batch["actions"][:, :1])
        want = ((q1 - targets) ** 2).mean() + ((q2 - targets) ** 2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def denoiser_outputs_reached_by_the_q_term(policy) -> list[bool]:
    """Whether DQL's Q term sends a nonzero gradient to the mean each fine-tuned denoising step computes, per step
    (noisiest first)."""
    method, means = policy.p_mean_var_from_features, []

    def recording(*args, **kwargs):
        mean, log_var = method(*args, **kwargs)
        mean.retain_grad()
        means.append(mean)
        return mean, log_var

    policy.p_mean_var_from_features = recording
    batch = {"obs": cond_of(4), "actions": torch.randn(4, TA, DA)}
    loss, terms = dql_actor_loss(policy, tiny_q(), batch, eta=1.0, act_steps=1)
    (loss - terms["bc_loss"]).backward()  # the Q term alone
    return [mean.grad is not None and mean.grad.abs().sum().item() > 0 for mean in means]


def test_dql_actor_loss_reaches_the_denoiser_through_the_whole_chain():
    """The Q term's gradient reaches every denoising step's output, not only the last step's; a chain detached at
    an intermediate step fails this check (the steps before the cut get no gradient)."""
    policy = make_policy()
    assert not policy.sample(cond_of(4)).actions.requires_grad, "plain sampling builds no graph"
    reached = denoiser_outputs_reached_by_the_q_term(policy)
    assert len(reached) == DIFFUSION_KWARGS["denoising_steps"] and all(reached), reached
    broken = make_policy()
    detach_input_at_call(broken, CHAIN_STEP_METHOD["diffusion"], call_index=2)
    assert denoiser_outputs_reached_by_the_q_term(broken) == [False, False, True, True, True]


def test_soft_update_is_polyak_averaging():
    target, source = nn.Linear(2, 2), nn.Linear(2, 2)
    before = target.weight.detach().clone()
    soft_update(target, source, tau=0.1)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * source.weight)


# ---- IDQL -----------------------------------------------------------------------------------------
class FixedQ(nn.Module):
    """Q1 = Q2 = the sum of the actions' elements (or a given function of them)."""

    def forward(self, cond, actions):
        q = actions.reshape(actions.shape[0], -1).sum(-1)
        return q, q


class FixedV(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, cond):
        return torch.full((cond["state"].shape[0],), self.value)


def make_selector(value=0.0, **kwargs):
    return CandidateSelector(make_policy(), target_q=FixedQ(), critic_v=FixedV(value), act_steps=TA, **kwargs)


def test_expectile_loss_by_hand():
    diff = torch.tensor([1.0, -2.0])
    assert expectile_loss(diff, 0.8).item() == pytest.approx((0.8 * 1 + 0.2 * 4) / 2)


def test_idql_value_loss_regresses_v_to_an_expectile_of_target_q():
    actions = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, 0.0]]])  # Q = 1 and -1
    # diffs Q - V: 0.5 (weight 0.8), -1.5 (weight 0.2)
    loss = idql_v_loss(FixedV(0.5), FixedQ(), {"obs": cond_of(2), "actions": actions}, expectile=0.8, act_steps=TA)
    assert loss.item() == pytest.approx((0.8 * 0.25 + 0.2 * 2.25) / 2)


def test_idql_acting_picks_the_best_candidate_and_explores_with_implicit_weights():
    model = make_selector(eval_num_sample=7, num_sample=6)
    cond = cond_of(3)
    torch.manual_seed(1)
    chosen = model.act(cond)
    torch.manual_seed(1)
    candidates, q = model.candidates(cond, 7, deterministic=True)
    best = candidates[q.argmax(0), torch.arange(3)]
    torch.testing.assert_close(chosen, best)
    assert (chosen.sum(dim=(-2, -1)) >= candidates.sum(dim=(-2, -1)) - 1e-6).all()

    # V between the best and the second best candidate: with exploration_weight 1 only the best can be drawn
    torch.manual_seed(2)
    candidates, q = model.candidates(cond, 6, deterministic=False)
    top2 = q.topk(2, dim=0).values
    model.critic_v = FixedV(0.0)
    model.exploration_weight = 1.0
    model.critic_v.forward = lambda c: (top2[0] + top2[1]) / 2  # V(s) of the 3 states
    torch.manual_seed(2)
    explored, stored = model.explore(cond)
    assert stored == {}
    torch.testing.assert_close(explored, candidates[q.argmax(0), torch.arange(3)])


def test_curve_panels_follow_the_losses_an_algorithm_logs():
    dql_keys = ["train/critic_loss", "train/actor_loss", "train/bc_loss", "train/q_loss", "train/episode_return",
                "eval/episode_return", "train/gradient_steps"]
    assert curve_panels(dql_keys) == {
        "reward": ["train/episode_return", "eval/episode_return"], "critic_loss": ["train/critic_loss"],
        "actor_loss": ["train/actor_loss"], "bc_loss": ["train/bc_loss"], "q_loss": ["train/q_loss"]}


# ---- the differentiable chain (DQL's actor loss), checked against finite differences ------------
def make_flow_policy():
    from model.flow.noisy_flow import NoiseNetwork, NoisyFlowPolicy
    torch.manual_seed(0)
    noise = NoiseNetwork(action_dim=DA, horizon_steps=TA, cond_dim=DO, mlp_dims=[16, 16, 16], sigma_min=0.05,
                         sigma_max=0.2)
    return NoisyFlowPolicy(noise_network=noise, network=tiny_denoiser(), horizon_steps=TA, obs_dim=DO, action_dim=DA,
                           inference_steps=4, final_action_clip_value=None)


CHAIN_STEP_METHOD = {"diffusion": "p_mean_var_from_features", "flow": "step_distribution"}


def detach_input_at_call(policy, method_name, call_index):
    """Make the policy's per-step method detach its chain input x at its `call_index`-th call (a broken chain)."""
    method, calls = getattr(policy, method_name), []

    def patched(x, *args, **kwargs):
        calls.append(None)
        return method(x.detach() if len(calls) == call_index + 1 else x, *args, **kwargs)

    setattr(policy, method_name, patched)


def chain_gradient_and_finite_difference(policy, cond, eps=1e-6):
    """d/d(eps) of a fixed weighting of `sample_differentiable`'s actions along a random direction in the actor's
    parameters: (autograd's value, the central finite difference), the same draws each time."""
    params = policy.actor_parameters()
    direction = [torch.randn_like(p) for p in params]
    weights = torch.randn(cond["state"].shape[0], TA, DA)

    def objective():
        torch.manual_seed(7)
        return (policy.sample_differentiable(cond) * weights).sum()

    grads = torch.autograd.grad(objective(), params, allow_unused=True)
    autograd_value = sum((g * d).sum() for g, d in zip(grads, direction) if g is not None)
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        plus = objective().item()
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        minus = objective().item()
        for p, d in zip(params, direction):
            p.add_(eps * d)
    return autograd_value.item(), (plus - minus) / (2 * eps)


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_differentiable_sample_gradient_equals_finite_differences_and_a_mid_chain_detach_breaks_it(kind):
    """The whole chain carries the gradient: autograd equals float64 finite differences to 1e-6 (relative), and
    the same check fails when one intermediate step detaches its input, so it catches a partly cut chain (the
    gradient that remains after such a cut is most of it: a first-layer-nonzero test would still pass)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        make = make_policy if kind == "diffusion" else make_flow_policy
        cond = cond_of(6)
        autograd_value, finite_difference = chain_gradient_and_finite_difference(make(), cond)
        assert autograd_value == pytest.approx(finite_difference, rel=1e-6)
        broken = make()
        detach_input_at_call(broken, CHAIN_STEP_METHOD[kind], call_index=2)
        autograd_value, finite_difference = chain_gradient_and_finite_difference(broken, cond)
        assert abs(autograd_value - finite_difference) > 1e-4 * abs(finite_difference)
    finally:
        torch.set_default_dtype(default)
