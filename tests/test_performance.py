"""Speed-ups of fine-tuning leave the numbers unchanged: each is compared with the straightforward computation on
the same seed and weights (to 1e-5), and the benchmark script runs in its tiny mode."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import compose_config, finetune_overrides

from agent.finetune.ppo import PPOAgent
from dppo.openmp import set_openmp_wait_defaults
from model.rl.ppo import normalize_advantages, ppo_loss

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "script"))
import bench  # noqa: E402


def make_agent(dataset_dir, run_dir, extra=()):
    cfg = compose_config("ft_ppo_diffusion_mlp", finetune_overrides(dataset_dir, run_dir, n_train_itr=1) + list(extra))
    return PPOAgent(cfg)


def synthetic_minibatch(model, batch, seed=0):
    """B samples as a rollout would give them: random observations, the policy's own chains, random returns,
    values and advantages, and old log-probabilities a little off the current ones (ratios != 1)."""
    gen = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(batch, model.cond_steps, model.obs_dim, generator=gen)}
    with torch.no_grad():
        _, stored = model.explore(obs)
        old_log_probs = model.log_probs(obs, stored) + 0.05 * torch.randn(batch, model.ft_denoising_steps,
                                                                           generator=gen)
    returns, values, advantages = (torch.randn(batch, generator=gen) for _ in range(3))
    return obs, stored, returns, values, advantages, old_log_probs


def gradients(module):
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("quantile_clip", [False, True])
def test_chunked_gradient_accumulation_equals_whole_minibatch(pretrained, tmp_path, quantile_clip):
    """grad_chunk_size splits the minibatch's loss into chunks: the accumulated gradients and the metrics equal
    those of the whole minibatch, also when advantages are clipped to minibatch quantiles (normalization and
    clipping must see the whole minibatch, not each chunk)."""
    dataset_dir, _ = pretrained
    extra = ["train.clip_advantage_lower_quantile=0.1", "train.clip_advantage_upper_quantile=0.9"] if quantile_clip else []
    extra.append("precision=fp32")  # bf16 gradients are rounded per chunk: equal only in distribution
    whole = make_agent(dataset_dir, tmp_path / "whole", extra)
    chunked = make_agent(dataset_dir, tmp_path / "chunked", extra + ["train.grad_chunk_size=7"])
    chunked.model.load_state_dict(whole.model.state_dict())
    chunked.critic.load_state_dict(whole.critic.state_dict())
    batch = synthetic_minibatch(whole.model, batch=30)

    metrics_whole = whole.minibatch_update(*batch)
    metrics_chunked = chunked.minibatch_update(*batch)

    for module in ("actor_ft", "critic"):
        grads_whole = gradients(getattr(whole.model, module, None) or whole.critic)
        grads_chunked = gradients(getattr(chunked.model, module, None) or chunked.critic)
        assert len(grads_whole) == len(grads_chunked) > 0
        for g_whole, g_chunked in zip(grads_whole, grads_chunked):
            torch.testing.assert_close(g_chunked, g_whole, rtol=1e-5, atol=1e-6)
    for key, value in metrics_whole.items():
        assert metrics_chunked[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    for p_whole, p_chunked in zip([*whole.model.parameters(), *whole.critic.parameters()],
                                  [*chunked.model.parameters(), *chunked.critic.parameters()]):
        torch.testing.assert_close(p_chunked, p_whole, rtol=1e-5, atol=1e-6)


def test_chunks_that_normalized_their_own_advantages_would_differ(pretrained, tmp_path):
    """The check above can fail: normalizing advantages per chunk (the mistake chunking invites) changes the
    gradient by far more than the tolerance."""
    dataset_dir, _ = pretrained
    agent = make_agent(dataset_dir, tmp_path / "agent")
    model, critic, settings = agent.model, agent.critic, agent.settings
    obs, stored, returns, values, advantages, old_log_probs = synthetic_minibatch(model, batch=30)
    reference = copy.deepcopy(model)
    out = ppo_loss(reference, critic, obs, stored, returns, values, normalize_advantages(advantages, settings),
                   old_log_probs, settings)
    out.pg_loss.backward()
    per_chunk = 0
    for chunk in (slice(0, 15), slice(15, 30)):
        part = ppo_loss(model, critic, {"state": obs["state"][chunk]}, {"chains": stored["chains"][chunk]},
                        returns[chunk], values[chunk], normalize_advantages(advantages[chunk], settings),
                        old_log_probs[chunk], settings)
        per_chunk = per_chunk + 0.5 * part.pg_loss
    per_chunk.backward()
    difference = max((a.grad - b.grad).abs().max().item()
                     for a, b in zip(model.actor_ft.parameters(), reference.actor_ft.parameters()))
    assert difference > 1e-4


def test_bench_tiny_mode_reports_every_figure(tmp_path):
    """script/bench.py --tiny: every figure is there and positive for both precisions and each off-policy
    algorithm, every phase was timed where it runs, and no phase is counted twice (their sum stays within the
    iteration's time); the patched functions are restored afterwards."""
    backward = torch.autograd.backward
    report = bench.main(["--tiny", "--threads", "1", "--algorithms", "dql,idql,awr,dsrl", "--dsrl-tasks", "hopper",
                         "--json", str(tmp_path / "bench.json")])
    assert torch.autograd.backward is backward
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(report))
    for precision in ("fp32", "bf16"):
        assert set(report["sampling_seconds"][precision]) == {"2", "4"}
        assert all(seconds > 0 for seconds in report["sampling_seconds"][precision].values())
    update = report["update"]
    assert update["terms"] == 4 * 3  # batch_size x ft_denoising_steps of the tiny config
    for precision in ("fp32", "bf16"):
        figures = update[precision]
        assert figures["update_terms_per_s"] == pytest.approx(update["terms"] / figures["update_seconds"])
        assert 0 < figures["update_vs_roofline"] and figures["matmul_products"] > 0
    assert report["precision"] in ("fp32", "bf16")
    probes = report["probes"]
    assert min(probes["elementwise_ms"].values()) > 0 and min(probes["adamw_step_ms"].values()) > 0
    assert set(probes["sampling_threads_ms"]) == {"1"}  # --threads 1: the job's threads are 1 too
    accuracy = probes["bf16_log_probs"]
    assert 0 < accuracy["abs_difference_mean"] <= accuracy["abs_difference_max"] < 0.1
    assert 0.5 < accuracy["change_correlation"] <= 1 and accuracy["change_mean_abs"] > 0
    assert 2 * 3 <= report["env"]["env_steps"] <= 2 * 3 * 4  # envs x chunk-steps x (1 to act_steps) env steps
    rollout_phases = {"env_wait", "sampling", "reward_scaling", "rollout_bookkeeping"}
    update_phases = {"backward", "optimizer"}
    expected = {
        "fp32": rollout_phases | update_phases | {"gae", "loss_forward"},  # old log-probs kept by the sampler
        "bf16": rollout_phases | update_phases | {"gae", "loss_forward", "old_log_probs"},  # recomputed
        "dql": rollout_phases | update_phases | {"replay_sample", "critic_forward", "target_actions",
                                                 "actor_chain_forward", "actor_bc_forward", "target_update"},
        "idql": rollout_phases | update_phases | {"replay_sample", "critic_forward", "actor_forward", "target_update"},
        "awr": rollout_phases | update_phases | {"replay_sample", "td_lambda", "critic_forward", "actor_forward"},
        "dsrl": rollout_phases | update_phases | {"replay_sample", "decode", "critic_forward", "actor_forward",
                                                  "target_update"},
    }
    iterations = {**{p: report["iteration"][p] for p in ("fp32", "bf16")}, **report["algorithms"]}
    for name, iteration in iterations.items():
        assert set(iteration["phases"]) == expected[name], name
        assert all(seconds > 0 for seconds in iteration["phases"].values()), name
        assert all(iteration["calls"][phase] > 0 for phase in iteration["phases"]), name
        assert sum(iteration["phases"].values()) <= iteration["total_seconds"], name
        assert iteration["unaccounted_seconds"] == pytest.approx(
            iteration["total_seconds"] - sum(iteration["phases"].values()))
        assert iteration["rollout_seconds"] + iteration["update_seconds"] == pytest.approx(iteration["total_seconds"])
        assert iteration["rollout_vs_bound"] > 0 if name in ("fp32", "bf16") else iteration["per_env_step_vs_dppo"] > 0
    assert report["iteration"]["fp32"]["calls"]["sampling"] == 3  # one explore per chunk-step, 3 chunk-steps
    assert report["algorithms"]["dql"]["calls"]["target_update"] == report["algorithms"]["dql"]["gradient_steps"]
    assert report["algorithms"]["dsrl"]["calls"]["target_update"] == report["algorithms"]["dsrl"]["gradient_steps"]
    assert report["algorithms"]["dsrl"]["gradient_steps"] == 3 * 2  # 3 chunk-steps, train_freq 1, utd 2
    step = report["dsrl_sac_step"]
    assert step["sb3_seconds"] > 0 and all(step[p]["speedup"] == pytest.approx(step["sb3_seconds"] / step[p]["seconds"])
                                           for p in ("fp32", "bf16"))
    (costs,) = report["dsrl_costs"]  # tiny: utd 2, 1 noise-critic step, train_freq 1, 2 envs, 4 actions a chunk
    assert costs["task"] == "hopper" and costs["config"]["utd"] == 2
    na = costs["na"]
    assert na["update_seconds_per_env_step"] == pytest.approx(
        (2 * na["gradient_step"]["seconds"] + na["noise_critic_step"]["seconds"]) / (1 * 2 * 4))
    assert costs["sac"]["update_seconds_per_env_step"] == pytest.approx(2 * costs["sac"]["gradient_step"]["seconds"] / 8)
    assert "noise_critic_step" not in costs["sac"]
    assert all(costs[v]["roofline_seconds_per_env_step"] > 0 and costs[v]["update_per_env_step_vs_dppo"] > 0
               for v in ("sac", "na"))
    for name in ("dql", "idql", "dsrl"):  # the first gradient step's matmuls, times the steps
        roofline = report["algorithms"][name]["update_roofline"]
        assert roofline["products_per_gradient_step"] > 0
        assert roofline["seconds"] == pytest.approx(roofline["seconds_per_gradient_step"]
                                                    * report["algorithms"][name]["gradient_steps"])
        assert roofline["per_env_step_vs_dppo"] > 0
    assert "update_roofline" not in report["algorithms"]["awr"]  # AWR draws no replay_sample batches


def test_bench_without_dppo_gives_the_other_figures_and_no_ratio_to_dppo(capsys):
    """--no-dppo: DPPO's figures are not measured; the DSRL costs and an algorithm's iteration are, and their
    table has no row that divides by DPPO."""
    report = bench.main(["--tiny", "--threads", "1", "--no-dppo", "--algorithms", "idql", "--dsrl-tasks", "hopper"])
    assert not {"iteration", "update", "sampling_seconds", "env", "config"} & set(report)
    (costs,) = report["dsrl_costs"]
    assert costs["na"]["update_seconds_per_env_step"] > 0 and "update_per_env_step_vs_dppo" not in costs["na"]
    assert report["algorithms"]["idql"]["seconds_per_env_step"] > 0
    assert "per_env_step_vs_dppo" not in report["algorithms"]["idql"]
    printed = capsys.readouterr().out
    assert "DSRL-NA on hopper" in printed and "idql iteration" in printed and "DPPO" not in printed


def test_matmul_recorder_counts_the_products_of_forward_and_backward():
    """A Linear layer's forward and backward are three products: (B x I)(I x O), the input gradient
    (B x O)(O x I) and the weight gradient (O x B)(B x I); under bf16 autocast in bfloat16; a batched product
    counts once per matrix."""
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5, requires_grad=True)
    with bench.MatmulRecorder() as recorder:
        layer(x).sum().backward()
    assert recorder.counts == {(7, 5, 3, "float32"): 1, (7, 3, 5, "float32"): 1, (3, 7, 5, "float32"): 1}
    with bench.MatmulRecorder() as recorder, torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        layer(x)
        torch.bmm(torch.randn(2, 4, 6), torch.randn(2, 6, 3))
    assert recorder.counts == {(7, 5, 3, "bfloat16"): 1, (4, 6, 3, "bfloat16"): 2}
    recorder.start()
    torch.mm(torch.randn(2, 2), torch.randn(2, 2))
    recorder.stop()
    torch.mm(torch.randn(2, 2), torch.randn(2, 2))  # after stop: not counted
    assert recorder.counts[(2, 2, 2, "float32")] == 1


def test_phase_clock_counts_nested_calls_once_and_restores_what_it_wrapped():
    class Work:
        def inner(self):
            return 1

        def outer(self):
            return self.inner() + 1

    work = Work()
    with bench.PhaseClock("cpu") as clock:
        clock.wrap(work, "inner", "inner")
        clock.wrap(work, "outer", "outer")
        assert work.outer() == 2 and work.inner() == 1
    assert dict(clock.calls) == {"outer": 1, "inner": 1}  # inner inside outer counted in outer only
    assert "inner" not in vars(work) and "outer" not in vars(work)


# ---- old log-probabilities kept by the sampler ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["ddpm", "ddim"])
def test_diffusion_explore_keeps_the_log_probs_the_update_would_recompute(mode):
    from test_ppo_diffusion import make_cond, make_ppo

    kwargs = {"use_ddim": True, "ddim_steps": 5, "ft_denoising_steps": 5} if mode == "ddim" else {}
    model = make_ppo(**kwargs)
    cond = make_cond(16)
    torch.manual_seed(5)
    with torch.no_grad():
        _, stored = model.explore(cond)
        recomputed = model.log_probs(cond, stored)
    assert stored["log_probs"].shape == (16, model.ft_denoising_steps)
    torch.testing.assert_close(stored["log_probs"], recomputed, rtol=1e-5, atol=1e-5)


def test_flow_explore_keeps_the_log_probs_the_update_would_recompute():
    from test_flow import cond_of, make_ppo_flow

    model = make_ppo_flow(act_steps=2)
    cond = cond_of(16)
    with torch.no_grad():
        _, stored = model.explore(cond)
        recomputed = model.log_probs(cond, stored)
    torch.testing.assert_close(stored["log_probs"], recomputed, rtol=1e-5, atol=1e-5)


def test_update_with_kept_log_probs_equals_update_with_recomputed_ones(pretrained, tmp_path):
    """One PPO update from a real rollout, once with the log-probs `explore` kept and once without them (the
    agent then recomputes them after the rollout): same metrics and weights to 1e-5."""
    dataset_dir, _ = pretrained
    kept = make_agent(dataset_dir, tmp_path / "kept")
    recomputed = make_agent(dataset_dir, tmp_path / "recomputed")
    recomputed.model.load_state_dict(kept.model.state_dict())
    recomputed.critic.load_state_dict(kept.critic.state_dict())
    rollout, _, _ = kept.collect_rollout(kept.reset_envs())
    assert "log_probs" in rollout.stored
    rollout_without = copy.copy(rollout)
    rollout_without.stored = {"chains": rollout.stored["chains"]}

    torch.manual_seed(7)
    metrics_kept = kept.update(rollout)
    torch.manual_seed(7)
    metrics_recomputed = recomputed.update(rollout_without)
    for key, value in metrics_recomputed.items():
        assert metrics_kept[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for p_kept, p_recomputed in zip(kept.model.parameters(), recomputed.model.parameters()):
        torch.testing.assert_close(p_kept, p_recomputed, rtol=1e-5, atol=1e-6)


# ---- the sampler: one encoding per chunk, one time embedding and 0-dim coefficients per step --------------
def make_finetune_model(kind, **kwargs):
    """A FinetuneDiffusion (horizon 4, action dim 2, 2 observation steps of dim 5) on the given denoiser, with a
    perturbed fine-tuned copy so the base and fine-tuned steps differ; and a cond of 3 samples."""
    from test_ppo_diffusion import perturb
    from test_unet_vit import reference_inputs, small_vit

    from model.diffusion.diffusion_rl import FinetuneDiffusion
    from model.diffusion.mlp import DiffusionMLP
    from model.diffusion.unet import DiffusionUNet1D

    torch.manual_seed(0)
    if kind == "mlp":
        network = DiffusionMLP(action_dim=2, horizon_steps=4, cond_dim=10, time_dim=8, mlp_dims=[32, 32, 32])
    elif kind == "unet":
        network = DiffusionUNet1D(2, 4, cond_dim=10, dim=16)
    else:  # a ViT over two camera views and the state, as the pixel configs use
        network = DiffusionMLP(action_dim=2, horizon_steps=4, cond_dim=None, time_dim=8, mlp_dims=[32, 32, 32],
                               obs_encoder=small_vit(augment=False))
    model = FinetuneDiffusion(network=network, network_path=None, horizon_steps=4, obs_dim=5, action_dim=2, cond_steps=2,
                              denoising_steps=8, ft_denoising_steps=3, min_sampling_denoising_std=0.1, **kwargs)
    perturb(model.actor_ft, seed=1, scale=0.02)
    _, _, cond = reference_inputs(3, 4, 2, state_dim=5, cond_steps=2, num_views=2 if kind == "vit" else 0)
    return model, cond


def straightforward_sample(model, cond, chain_steps, deterministic):
    """The sampler as first written: every step encodes the observations and embeds a (B,) tensor of steps."""
    batch = cond["state"].shape[0]
    x = torch.randn(batch, model.horizon_steps, model.action_dim)
    chain = []
    for k in reversed(range(model.sampling_steps)):
        if k == chain_steps - 1:
            chain.append(x)
        mean, log_var = model.p_mean_var(x, torch.full((batch,), k), cond, model.denoiser_at(k), deterministic)
        std = model.sampling_std(log_var, k, deterministic)
        x = mean + std * torch.randn_like(x).clamp(-model.randn_clip_value, model.randn_clip_value)
        if k == 0:
            x = model.clip_final(x)
        if k < chain_steps:
            chain.append(x)
    return x, torch.stack(chain, dim=1)


@pytest.mark.parametrize("kind", ["mlp", "unet", "vit"])
@pytest.mark.parametrize("ddim", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_sampler_equals_straightforward_sampling(kind, ddim, deterministic):
    kwargs = {"use_ddim": True, "ddim_steps": 4} if ddim else {}
    model, cond = make_finetune_model(kind, **kwargs)
    with torch.no_grad():
        torch.manual_seed(3)
        expected_actions, expected_chains = straightforward_sample(model, cond, 3, deterministic)
        torch.manual_seed(3)
        sample = model.sample(cond, deterministic=deterministic, chain_steps=3)
    torch.testing.assert_close(sample.actions, expected_actions, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sample.chains, expected_chains, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "unet", "vit"])
def test_chain_log_probs_and_gradients_equal_per_step_encoding(kind):
    """chain_log_probs encodes each sample once and repeats the features over the K' steps: the log-probs and
    the gradients reaching the encoder equal those of encoding the repeated observations."""
    model, cond = make_finetune_model(kind)
    with torch.no_grad():
        torch.manual_seed(4)
        _, stored = model.explore(cond)
    chains, n_ft = stored["chains"], model.ft_denoising_steps
    fast = model.chain_log_probs(cond, chains)
    fast.sum().backward()
    fast_grads = [p.grad.clone() for p in model.actor_ft.parameters()]
    model.zero_grad()

    batch = chains.shape[0]
    x_in = chains[:, :-1].reshape(batch * n_ft, 4, 2)
    x_out = chains[:, 1:].reshape(batch * n_ft, 4, 2)
    k = torch.arange(n_ft - 1, -1, -1).repeat(batch)
    cond_rep = {key: value.repeat_interleave(n_ft, dim=0) for key, value in cond.items()}
    mean, log_var = model.p_mean_var(x_in, k, cond_rep, model.actor_ft)
    slow = model.step_log_probs(mean, log_var, x_out).view(batch, n_ft, 4, 2)
    slow.sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for fast_grad, p in zip(fast_grads, model.actor_ft.parameters()):
        torch.testing.assert_close(fast_grad, p.grad, rtol=1e-4, atol=1e-5)


# ---- the overlapped rollout ---------------------------------------------------------------------------------
def test_overlapped_rollout_equals_one_group_rollout(pretrained, tmp_path):
    """Two env groups (one samples while the other steps) give exactly the rollout of one group when the policy is
    a deterministic function of the observation: same observations, actions, rewards, ends and episodes."""
    dataset_dir, _ = pretrained
    rollouts = []
    for overlap in (False, True):
        agent = make_agent(dataset_dir, tmp_path / str(overlap), [f"env.overlap_rollout={overlap}", "env.n_envs=3",
                                                                 "train.n_steps=40"])
        assert len(agent.venv.groups) == (2 if overlap else 1)

        def explore(obs):
            state = obs["state"]
            actions = torch.tanh(state[:, -1, :3] * 3.0)[:, None, :].expand(-1, 4, -1).contiguous()
            return actions, {"chains": actions[:, None].repeat(1, 2, 1, 1), "log_probs": state[:, -1, :1]}

        agent.model.explore = explore
        rollout, last_obs, metrics = agent.collect_rollout(agent.reset_envs())
        rollouts.append((rollout, last_obs, metrics))
        agent.venv.close()
    (one, one_obs, one_metrics), (two, two_obs, two_metrics) = rollouts
    assert one.ends.any(), "the check needs episodes that end inside the rollout"
    for field in ("obs", "next_obs", "actions", "stored", "rewards", "terminated", "ends", "firsts"):
        torch.testing.assert_close(getattr(two, field), getattr(one, field), rtol=0, atol=0)
    torch.testing.assert_close(two_obs, one_obs, rtol=0, atol=0)
    assert two_metrics == one_metrics


# ---- normalization once per chunk ---------------------------------------------------------------------------
def test_normalizing_histories_and_chunks_equals_normalizing_each_step():
    """NormalizeObsAction outside MultiStep (one call per chunk) gives exactly the observations, rewards and ends
    of NormalizeObsAction inside it (one call per simulator step), on Hopper with the shipped statistics."""
    import numpy as np

    from dppo.normalization import MinMaxNormalizer
    from env.gym_locomotion import make_gym_env
    from env.wrappers.guard import SimulatorGuard
    from env.wrappers.multi_step import MultiStep
    from env.wrappers.normalization import NormalizeObsAction

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    normalizer = MinMaxNormalizer.load(os.path.join(repo, "data", "gym", "hopper-medium-v5", "normalization.npz"))
    per_step = MultiStep(NormalizeObsAction(SimulatorGuard(make_gym_env("Hopper-v5")), normalizer), 2, 4)
    per_chunk = NormalizeObsAction(MultiStep(SimulatorGuard(make_gym_env("Hopper-v5")), 2, 4), normalizer)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 4, 3)).astype(np.float32)
    outputs = []
    for env in (per_step, per_chunk):
        obs, _ = env.reset(seed=0)
        trace = [obs["state"]]
        for chunk in actions:
            obs, reward, terminated, truncated, info = env.step(chunk)
            trace += [obs["state"], reward, terminated, truncated, info["n_executed"]]
            if terminated or truncated:
                obs, _ = env.reset(seed=1)
                trace.append(obs["state"])
        outputs.append(trace)
    assert any(isinstance(x, bool) and x for x in outputs[0]), "the check needs an episode that ends"
    assert len(outputs[0]) == len(outputs[1])
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)


def test_rollout_and_evaluation_sample_on_the_sampling_threads(pretrained, tmp_path):
    """collect_rollout and evaluate run the policy on train.sampling_threads torch threads and restore the job's
    count afterwards (the update keeps all of them)."""
    dataset_dir, _ = pretrained
    agent = make_agent(dataset_dir, tmp_path, ["train.sampling_threads=1"])
    seen = []
    explore, act = agent.model.explore, agent.model.act
    agent.model.explore = lambda cond: (seen.append(torch.get_num_threads()), explore(cond))[1]
    agent.model.act = lambda cond: (seen.append(torch.get_num_threads()), act(cond))[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        agent.collect_rollout(agent.reset_envs())
        agent.evaluate()
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
        agent.venv.close()


@pytest.mark.parametrize("environment, expected", [
    ({}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}),  # sleep after a short spin
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}),  # no cap on its spinning
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),  # sleeps at once
    ({"GOMP_SPINCOUNT": "0"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}),
])
def test_openmp_wait_defaults_leave_what_the_environment_sets(monkeypatch, environment, expected):
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    set_openmp_wait_defaults()
    assert {key: os.environ.get(key) for key in expected} == expected


def test_the_openmp_settings_load_before_torch():
    """OpenMP reads its wait settings once, when torch loads it: script/run.py and the bench set them by importing
    dppo.openmp first, which must not import torch itself."""
    code = "import sys; import dppo.openmp; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=bench.REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr[-2000:]
