"""Expected values of ReinFlow's PPO flow policy with its Hopper options, computed by running ReinFlow itself.

    python script/reference/make_reinflow_fixture.py --reference /tmp/reinflow_ref --out tests/data/reference_reinflow.pt

`--reference` is a checkout of github.com/ReinFlow/ReinFlow (e.g. `git --git-dir=<bare repo> archive HEAD | tar -x`).
Its modules are imported unchanged: model.flow.ft_ppo.ppoflow.PPOFlow (with model.flow.mlp_flow.FlowMLP and
NoisyFlowMLP, model.common.critic.CriticObs), util.scheduler.CosineAnnealingWarmupRestarts and
util.scheduler_simple.get_scheduler. The model takes the options of cfg/gym/finetune/hopper-v2/ft_ppo_reflow_mlp.yaml
with small dimensions (SMALL). Nothing of this project is imported: ReinFlow's `model` package would collide with ours.

The Gaussian draws of ReinFlow's sampler (torch.distributions.Normal.sample, which calls torch.normal) are replaced by
loc + scale * eps with eps taken from recorded tensors, so the sampled chains can be replayed exactly. The keys of the
output file are described in script/reference/README_reinflow.md.
"""

import argparse
import contextlib
import importlib
import math
import sys
import zlib

import torch

REINFLOW_COMMIT = "aed28193b6515f57f8eac7b24596508461bd2a18"  # ReinFlow HEAD this fixture was made from

# Small dimensions; everything else as the Hopper config. ReinFlow's ResidualMLP needs an odd number of hidden
# dims (input layer + two-layer residual blocks), so [16, 16, 16] is the smallest shape of Hopper's [512, 512, 512].
SMALL = dict(obs_dim=3, cond_steps=1, action_dim=2, horizon_steps=4, act_steps=4, inference_steps=4, time_dim=16,
             mlp_dims=[16, 16, 16], critic_dims=[16, 16, 16], noise_hidden_dims=[16, 16], batch=16)
# cfg/gym/finetune/hopper-v2/ft_ppo_reflow_mlp.yaml
HOPPER = dict(min_std=0.10, max_std=0.24, randn_clip_value=3.0, logprob_min=-1.0, logprob_max=1.0,
              clip_ploss_coef=0.01, clip_vloss_coef=None, denoised_clip_value=1.0, noise_scheduler_type="learn_decay",
              explore_net_activation_type="Tanh", velocity_activation="ReLU", critic_activation="Mish",
              ent_coef=0.03, vf_coef=0.5, n_train_itr=1000, val_freq=10, max_noise_hold_ratio=0.35,
              max_noise_decay_ratio=0.7, actor_lr=4.5e-5, actor_min_lr=2.0e-5, critic_lr=6.5e-4, critic_min_lr=3e-4,
              lr_first_cycle_steps=100, lr_warmup_steps=10)
# What TrainPPOFlowAgent passes to get_actions / get_logprobs / loss (train_ppo_flow_agent.py lines 57-61).
AGENT_FLAGS = dict(normalize_denoising_horizon=True, normalize_act_space_dimension=True,
                   clip_intermediate_actions=True, account_for_initial_stochasticity=True)
RAW_FLAGS = {**AGENT_FLAGS, "normalize_denoising_horizon": False, "normalize_act_space_dimension": False}
FAR_SAMPLE = 7  # a chain drawn from the tails
PERTURBATION = 0.03  # relative size of the weight change between old and new log-probs
SCHEDULE_ITERATIONS = [0, 1, 349, 350, 351, 400, 500, 675, 850, 999]


def import_reinflow(reference: str) -> dict:
    """ReinFlow's modules, imported from `reference` first on sys.path (its `model` package shadows ours)."""
    sys.path.insert(0, reference)
    modules = {name: importlib.import_module(name) for name in
               ("model.flow.ft_ppo.ppoflow", "model.flow.mlp_flow", "model.common.critic", "util.scheduler",
                "util.scheduler_simple")}
    for module in modules.values():
        if not module.__file__.startswith(reference.rstrip("/")):
            raise RuntimeError(f"imported {module.__file__}, not ReinFlow's copy under {reference}.")
    return dict(ppoflow=modules["model.flow.ft_ppo.ppoflow"], FlowMLP=modules["model.flow.mlp_flow"].FlowMLP,
                CriticObs=modules["model.common.critic"].CriticObs,
                get_scheduler=modules["util.scheduler_simple"].get_scheduler,
                CosineAnnealingWarmupRestarts=modules["util.scheduler"].CosineAnnealingWarmupRestarts)


def seeded_normal(shape, key: str) -> torch.Tensor:
    """Unit normal draws that depend only on `key` and `shape`."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))


def fill_parameters(module: torch.nn.Module, tag: str) -> None:
    """normal(0, 1/sqrt(fan_in)) matrices and normal(0, 0.1) vectors, keyed by tag + parameter name.
    Non-trainable parameters (ReinFlow's logvar bounds) are left alone."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith(("logvar_min", "logvar_max")):
                continue
            noise = seeded_normal(param.shape, f"{tag}.{name}")
            param.copy_(noise / math.sqrt(param.shape[1]) if param.dim() == 2 else 0.1 * noise)


def perturb_parameters(module: torch.nn.Module, tag: str) -> None:
    """w <- w + PERTURBATION * |w|_rms * normal, for every trainable parameter."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.requires_grad:
                scale = param.pow(2).mean().sqrt()
                param.add_(PERTURBATION * scale * seeded_normal(param.shape, f"perturb.{tag}.{name}"))


def build_model(ref: dict) -> torch.nn.Module:
    s, h = SMALL, HOPPER
    cond_dim = s["obs_dim"] * s["cond_steps"]
    policy = ref["FlowMLP"](horizon_steps=s["horizon_steps"], action_dim=s["action_dim"], cond_dim=cond_dim,
                            time_dim=s["time_dim"], mlp_dims=s["mlp_dims"], activation_type=h["velocity_activation"],
                            out_activation_type="Identity", use_layernorm=False, residual_style=True)
    critic = ref["CriticObs"](cond_dim=cond_dim, mlp_dims=s["critic_dims"], activation_type=h["critic_activation"],
                              residual_style=True)
    model = ref["ppoflow"].PPOFlow(
        device="cpu", policy=policy, critic=critic, actor_policy_path=None, act_dim=s["action_dim"],
        horizon_steps=s["horizon_steps"], act_min=-1, act_max=1, obs_dim=s["obs_dim"], cond_steps=s["cond_steps"],
        noise_scheduler_type=h["noise_scheduler_type"], inference_steps=s["inference_steps"],
        ft_denoising_steps=s["inference_steps"], randn_clip_value=h["randn_clip_value"],
        min_sampling_denoising_std=h["min_std"], min_logprob_denoising_std=h["min_std"],
        logprob_min=h["logprob_min"], logprob_max=h["logprob_max"], clip_ploss_coef=h["clip_ploss_coef"],
        clip_ploss_coef_base=h["clip_ploss_coef"], clip_ploss_coef_rate=3, clip_vloss_coef=h["clip_vloss_coef"],
        denoised_clip_value=h["denoised_clip_value"], max_logprob_denoising_std=h["max_std"], time_dim_explore=0,
        learn_explore_time_embedding=False, use_time_independent_noise=False,
        noise_hidden_dims=s["noise_hidden_dims"], logprob_debug_sample=False, logprob_debug_recalculate=False,
        explore_net_activation_type=h["explore_net_activation_type"])
    fill_parameters(model.actor_old, "velocity")
    model.actor_ft.policy.load_state_dict(model.actor_old.state_dict())
    fill_parameters(model.actor_ft.explore_noise_net, "noise")
    fill_parameters(model.critic, "critic")
    return model


@contextlib.contextmanager
def replayed_normal_draws(eps_list: list[torch.Tensor], record: list[tuple[torch.Tensor, torch.Tensor]]):
    """torch.normal(loc, scale) returns loc + scale * eps_list[i] for its i-th call and records (loc, scale)."""
    original = torch.normal
    queue = list(eps_list)

    def replay(loc, scale, *args, **kwargs):
        eps = queue.pop(0)
        record.append((loc.detach().clone(), scale.detach().clone()))
        return loc + scale * eps.reshape(loc.shape)

    torch.normal = replay
    try:
        yield
    finally:
        torch.normal = original
    if queue:
        raise RuntimeError(f"{len(queue)} recorded draws were not used: the sampler drew fewer times than expected.")


@contextlib.contextmanager
def recorded_step_distributions(ppoflow, record: list[tuple[torch.Tensor, torch.Tensor]]):
    """Records (loc, scale) of every Normal that ppoflow.py builds (get_logprobs builds the x0 prior, then the steps)."""
    original = ppoflow.Normal

    class RecordingNormal(original):
        def __init__(self, loc, scale, *args, **kwargs):
            super().__init__(loc, scale, *args, **kwargs)
            record.append((self.loc.detach().clone(), self.scale.detach().clone()))

    ppoflow.Normal = RecordingNormal
    try:
        yield
    finally:
        ppoflow.Normal = original


def make_inputs() -> dict:
    s = SMALL
    batch, ta, da, k = s["batch"], s["horizon_steps"], s["action_dim"], s["inference_steps"]
    state = 1.5 * seeded_normal((batch, s["cond_steps"], s["obs_dim"]), "state")
    eps_x0 = seeded_normal((batch, ta * da), "eps_x0")
    eps_steps = seeded_normal((batch, k, ta, da), "eps_steps")
    eps_steps[0, 0, 0, 0] = 3.7   # beyond randn_clip_value: ReinFlow clamps the draw to mean +- 3 std
    eps_steps[1, 2, 1, 1] = -4.2
    eps_steps[2, k - 1, 0, 1] = 3.5
    eps_x0[FAR_SAMPLE] = 2.5      # an unlikely chain: its normalized log-prob falls below logprob_min = -1
    eps_steps[FAR_SAMPLE] = 2.8 * eps_steps[FAR_SAMPLE].sign()
    return dict(state=state, eps_x0=eps_x0, eps_steps=eps_steps, returns=seeded_normal(batch, "returns"),
                old_values=seeded_normal(batch, "old_values"), advantages=2.0 * seeded_normal(batch, "advantages") + 0.5)


def sample(model, ppoflow, inputs: dict, flags: dict) -> dict:
    """get_actions with the recorded draws: actions, chains, log-probs and the (mean, std) of every draw."""
    k = SMALL["inference_steps"]
    eps = [inputs["eps_x0"]] + [inputs["eps_steps"][:, i] for i in range(k)]
    draws = []
    with replayed_normal_draws(eps, draws):
        actions, chains, log_prob = model.get_actions({"state": inputs["state"]}, eval_mode=False, save_chains=True,
                                                      **flags)
    means = torch.stack([loc for loc, _ in draws[1:]], dim=1)
    stds = torch.stack([scale for _, scale in draws[1:]], dim=1)
    return dict(actions=actions, chains=chains, log_probs=log_prob, means=means, stds=stds)


def chain_log_probs(model, ppoflow, cond: dict, chains: torch.Tensor, flags: dict) -> dict:
    """get_logprobs (as PPOFlow.loss calls it): log-probs, entropy and the steps' means and stds."""
    dists = []
    with recorded_step_distributions(ppoflow, dists):
        log_prob, entropy, mean_std = model.get_logprobs(cond, chains, get_entropy=True, verbose_entropy_stats=False,
                                                         **flags)
    (_, _), (means, stds) = dists
    shape = chains[:, 1:].shape
    return dict(log_probs=log_prob.detach(), entropy=entropy.detach(), mean_std=mean_std.item(),
                means=means.reshape(shape), stds=stds.detach().reshape(shape))


def ppo_terms(model, inputs: dict, chains: torch.Tensor, old_log_probs: torch.Tensor) -> dict:
    """PPOFlow.loss on the batch plus the per-sample clamped log-probs and ratios it forms internally."""
    cond = {"state": inputs["state"]}
    (pg_loss, entropy_loss, v_loss, _, clipfrac, approx_kl, ratio_mean, *_, noise_std, value_mean) = model.loss(
        cond, chains, inputs["returns"], inputs["old_values"], inputs["advantages"], old_log_probs,
        use_bc_loss=False, bc_loss_type=None, verbose=False, **AGENT_FLAGS)
    new_log_probs, _ = model.get_logprobs(cond, chains, get_entropy=False, verbose_entropy_stats=False, **AGENT_FLAGS)
    new_clamped = new_log_probs.detach().clamp(HOPPER["logprob_min"], HOPPER["logprob_max"])
    old_clamped = old_log_probs.clamp(HOPPER["logprob_min"], HOPPER["logprob_max"])
    return dict(old_log_probs=old_log_probs, new_log_probs=new_log_probs.detach(), new_log_probs_clamped=new_clamped,
                old_log_probs_clamped=old_clamped, ratios=(new_clamped - old_clamped).exp(),
                values=model.critic({"state": inputs["state"]}).view(-1).detach(), pg_loss=pg_loss.item(),
                entropy_loss=entropy_loss.item(), v_loss=v_loss.item(), approx_kl=approx_kl, clipfrac=clipfrac,
                ratio=ratio_mean, noise_std=noise_std, value_mean=value_mean)


def probe(model, inputs: dict, chains: torch.Tensor) -> dict:
    """Velocity and noise-net outputs on the chain's step inputs at times spread over [0, 1]."""
    s = SMALL
    batch, k = s["batch"], s["inference_steps"]
    x = chains[:, :-1].reshape(batch * k, s["horizon_steps"], s["action_dim"])
    t = torch.linspace(0, 1, batch * k)
    state = inputs["state"].repeat_interleave(k, dim=0)
    with torch.no_grad():
        velocity, time_emb, _ = model.actor_ft.policy(x, t, {"state": state}, output_embedding=True)
        _, noise_std = model.actor_ft(x, t, {"state": state}, learn_exploration_noise=True, step=0)
    return dict(x=x, t=t, state=state, velocity=velocity, time_embedding=time_emb, noise_std=noise_std)


def noise_schedule(ref: dict) -> dict:
    """sigma_max over training as TrainPPOFlowAgent sets it (train_ppo_flow_agent.py lines 84-97, 208-214):
    the bound in force during iteration i is the initial max_std for i = 0 and scheduler(i - 1) after."""
    h = HOPPER
    n = h["n_train_itr"]
    decayed = h["min_std"] * (1 - h["max_noise_decay_ratio"]) + h["max_std"] * h["max_noise_decay_ratio"]
    scheduler = ref["get_scheduler"](schedule_type="cosine", max=h["max_std"], hold_steps=n * h["max_noise_hold_ratio"],
                                     anneal_steps=n * (1 - h["max_noise_hold_ratio"]), min=decayed)
    in_force = [h["max_std"]] + [float(scheduler(i - 1)) for i in range(1, n)]
    return dict(sigma_min=h["min_std"], sigma_max_start=h["max_std"], sigma_max_end=decayed,
                scheduler_iterations=torch.tensor(SCHEDULE_ITERATIONS),
                scheduler_values=torch.tensor([float(scheduler(i)) for i in SCHEDULE_ITERATIONS], dtype=torch.float64),
                sigma_max_in_force=torch.tensor(in_force, dtype=torch.float64))


def lr_schedules(ref: dict) -> dict:
    """Actor and critic lr in force during each iteration's update, as TrainPPOAgent builds the schedulers
    (train_ppo_agent.py lines 66-125); visualize_lr (lines 199-208) steps them n_train_itr times before training."""
    h = HOPPER
    out = {}
    for role in ("actor", "critic"):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=h[f"{role}_lr"])
        scheduler = ref["CosineAnnealingWarmupRestarts"](
            optimizer, first_cycle_steps=h["lr_first_cycle_steps"], cycle_mult=1.0, max_lr=h[f"{role}_lr"],
            min_lr=h[f"{role}_min_lr"], warmup_steps=h["lr_warmup_steps"], gamma=1.0)
        for _ in range(h["n_train_itr"]):
            scheduler.step()
        lrs = []
        for _ in range(h["n_train_itr"]):
            lrs.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
        out[role] = torch.tensor(lrs, dtype=torch.float64)
    return out


def decayed_noise(model, probe_out: dict, sigma_max: float) -> torch.Tensor:
    """Noise-net output on the probe once the upper bound is lowered to sigma_max (then restored)."""
    net = model.actor_ft.explore_noise_net
    net.set_noise_range([HOPPER["min_std"], sigma_max])
    with torch.no_grad():
        _, noise_std = model.actor_ft(probe_out["x"], probe_out["t"], {"state": probe_out["state"]},
                                      learn_exploration_noise=True, step=0)
    net.set_noise_range([HOPPER["min_std"], HOPPER["max_std"]])
    return noise_std


def check_coverage(inputs: dict, sampled: dict, ppo: dict) -> None:
    """The fixture must exercise ReinFlow's clamps and give non-trivial ratios, else it tests little."""
    clip = HOPPER["randn_clip_value"]
    eps = inputs["eps_steps"]
    if not (eps.abs() > clip).any():
        raise RuntimeError("no draw beyond randn_clip_value")
    if not (sampled["means"].abs() >= HOPPER["denoised_clip_value"]).any():
        raise RuntimeError("no step mean reaches the [-1, 1] clamp: raise the state scale")
    last = sampled["means"][:, -1] + sampled["stds"][:, -1] * eps[:, -1].clamp(-clip, clip)
    if not (last.abs() > 1).any():
        raise RuntimeError("no final action reaches the [-1, 1] clamp: raise the state scale")
    if not (ppo["old_log_probs"] < HOPPER["logprob_min"]).any():
        raise RuntimeError("no log-prob below logprob_min: the FAR_SAMPLE chain is not far enough")
    if not 0 < ppo["clipfrac"] < 1:
        raise RuntimeError(f"clipfrac {ppo['clipfrac']}: change PERTURBATION")


def state_dict_of(module: torch.nn.Module) -> dict:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="ReinFlow checkout (its repository root)")
    parser.add_argument("--out", required=True, help="output .pt file")
    parser.add_argument("--commit", default=REINFLOW_COMMIT, help="the ReinFlow commit of --reference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ref = import_reinflow(args.reference)
    ppoflow = ref["ppoflow"]
    model = build_model(ref)
    inputs = make_inputs()
    cond = {"state": inputs["state"]}

    sampled = sample(model, ppoflow, inputs, AGENT_FLAGS)
    sampled_raw = sample(model, ppoflow, inputs, RAW_FLAGS)
    with replayed_normal_draws([inputs["eps_x0"]], []):  # evaluation draws x0 only
        eval_actions = model.get_actions(cond, eval_mode=True, save_chains=False, ret_logprob=False, **AGENT_FLAGS)
    chains = sampled["chains"]
    recomputed = chain_log_probs(model, ppoflow, cond, chains, AGENT_FLAGS)
    recomputed_raw = chain_log_probs(model, ppoflow, cond, chains, RAW_FLAGS)
    probe_out = probe(model, inputs, chains)
    schedule = noise_schedule(ref)
    probe_out["decayed_sigma_max"] = schedule["sigma_max_end"]
    probe_out["noise_std_decayed"] = decayed_noise(model, probe_out, schedule["sigma_max_end"])
    # The agent's own first-minibatch check (train_ppo_flow_agent.py line 423) compares the stored old
    # log-probs (from get_actions) with get_logprobs on unchanged weights.
    first_ratio = ppo_terms(model, inputs, chains, sampled["log_probs"])["ratio"]
    state_dict_old = state_dict_of(model)

    perturb_parameters(model.actor_ft, "actor")
    perturb_parameters(model.critic, "critic")
    ppo = ppo_terms(model, inputs, chains, recomputed["log_probs"])
    ppo_stored_old = ppo_terms(model, inputs, chains, sampled["log_probs"])
    check_coverage(inputs, sampled, ppo)

    k = SMALL["inference_steps"]
    fixture = {
        "reinflow_commit": args.commit,
        "config": {**SMALL, **{key: value for key, value in HOPPER.items() if value is not None},
                   "agent_flags": AGENT_FLAGS},
        "inputs": {key: value for key, value in inputs.items()},
        "state_dict": state_dict_old,
        "state_dict_perturbed": state_dict_of(model),
        "sample": {**sampled, "times": torch.linspace(0, 1, k), "log_probs_raw": sampled_raw["log_probs"],
                   "eval_actions": eval_actions},
        "log_prob": {**recomputed, "times": torch.linspace(0, 1 - 1 / k, k),
                     "log_probs_raw": recomputed_raw["log_probs"], "entropy_raw": recomputed_raw["entropy"]},
        "first_minibatch_ratio": first_ratio,
        "probe": probe_out,
        "ppo": ppo,
        "ppo_stored_old": ppo_stored_old,
        "noise_schedule": schedule,
        "lr": lr_schedules(ref),
    }
    torch.save(fixture, args.out)
    print(f"wrote {args.out}: first-minibatch ratio {first_ratio:.6f}, pg_loss {ppo['pg_loss']:.6f}, "
          f"clipfrac {ppo['clipfrac']:.3f}, approx_kl {ppo['approx_kl']:.2e}")


if __name__ == "__main__":
    main()
