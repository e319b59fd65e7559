"""Promises the agents' updates keep about the collected steps, checked on real agents and rollouts: a cut step
(worker restart, simulator failure) is never learned from, DAWR's TD(lambda) restarts at an episode start in the
replay and its critic learns from all of it, and DQL's and IDQL's target critics follow their critics at the
configured Polyak rate."""

import copy
import dataclasses

import pytest
import torch
from conftest import compose_config, finetune_overrides

from agent.finetune.awr import AWRAgent
from agent.finetune.dql import DQLAgent
from agent.finetune.idql import IDQLAgent
from agent.finetune.ppo import PPOAgent

CUT_STEP, CUT_ENV = 3, 1  # the step of the rollout (8 steps x 2 envs) whose transition never happened


def make_agent(agent_class, config_name, pretrained, tmp_path, extra=()):
    dataset_dir, _ = pretrained
    overrides = finetune_overrides(dataset_dir, tmp_path, n_train_itr=1) + ["precision=fp32", *extra]
    if agent_class is not PPOAgent:  # PPO's epochs: the off-policy agents count gradient steps instead
        overrides = [o for o in overrides if not o.startswith("train.update_epochs=")]
    if agent_class is IDQLAgent:  # two critics of its own, as tiny as the others
        overrides = [o for o in overrides if not o.startswith("critic.")] + [
            "critic_q.mlp_dims=[32,32,32]", "critic_v.mlp_dims=[32,32,32]"]
    return agent_class(compose_config(config_name, overrides))


def module_states(agent) -> dict:
    return {name: copy.deepcopy(module.state_dict()) for name, module in agent.checkpointed_modules().items()}


def with_cut_step_contents(rollout, value: float):
    """The rollout with step (CUT_STEP, CUT_ENV) cut, as a simulator failure leaves it (an end that is cut), and
    everything recorded at that step (observations, chunk, chain, log-probs, rewards) replaced by `value`."""
    def fill(x):
        x = x.clone()
        x[CUT_STEP, CUT_ENV] = value
        return x

    ends, cut = rollout.ends.clone(), rollout.cut.clone()
    ends[CUT_STEP, CUT_ENV] = cut[CUT_STEP, CUT_ENV] = True
    return dataclasses.replace(
        rollout, obs={k: fill(v) for k, v in rollout.obs.items()}, next_obs={k: fill(v) for k, v in rollout.next_obs.items()},
        actions=fill(rollout.actions), stored={k: fill(v) for k, v in rollout.stored.items()},
        rewards=fill(rollout.rewards), scaled_rewards=fill(rollout.scaled_rewards), ends=ends, cut=cut)


def test_ppo_learns_nothing_from_a_cut_step(pretrained, tmp_path):
    """Two updates from the same weights and random draws on rollouts that differ only in a cut step's contents end
    at the same weights: the cut step is no sample, no return and no bootstrap target."""
    agents = [make_agent(PPOAgent, "ft_ppo_diffusion_mlp", pretrained, tmp_path / str(i)) for i in range(2)]
    rollout, _, _ = agents[0].collect_rollout(agents[0].reset_envs())
    before = module_states(agents[0])
    after = []
    for agent, value in zip(agents, (-7.0, 7.0)):
        torch.manual_seed(0)
        metrics = agent.update(with_cut_step_contents(rollout, value))
        assert metrics["minibatch_updates"] > 0
        after.append(module_states(agent))
    for name in before:
        for key in before[name]:
            torch.testing.assert_close(after[1][name][key], after[0][name][key], rtol=0, atol=0, msg=f"{name}.{key}")
    assert any(not torch.equal(after[0]["model"][key], before["model"][key]) for key in before["model"]), "it learned"


def test_reward_offset_is_taken_from_each_env_step_the_agent_learns_from(pretrained, tmp_path):
    """train.reward_offset (DSRL's on sparse-success tasks): the rollout's rewards are the env's less the offset once
    per env step the chunk ran (4, fewer where an episode ended within it); the reported episode returns stay the
    env's."""
    rollouts, metrics = [], []
    for offset in (0, 2.5):
        agent = make_agent(PPOAgent, "ft_ppo_diffusion_mlp", pretrained, tmp_path / str(offset),
                           extra=[f"train.reward_offset={offset}"])
        torch.manual_seed(0)
        rollout, _, rollout_metrics = agent.collect_rollout(agent.reset_envs())
        rollouts.append(rollout)
        metrics.append(rollout_metrics)
    steps_run = (rollouts[0].rewards - rollouts[1].rewards) / 2.5  # (T, n_envs) env steps of each chunk
    torch.testing.assert_close(steps_run, steps_run.round())
    assert torch.all(steps_run[~rollouts[0].ends] == 4)
    assert rollouts[0].ends.any() and torch.all((steps_run[rollouts[0].ends] >= 1) & (steps_run[rollouts[0].ends] <= 4))
    assert metrics[0]["episode_return"] == metrics[1]["episode_return"]


def test_dawr_td_lambda_restarts_at_an_episode_start_in_the_replay(pretrained, tmp_path):
    """An episode that starts in the replay without an end before it (after an evaluation, a resume or
    reset_at_iteration) cuts the TD(lambda) return there as an end would: the step before it bootstraps from
    V(its next obs) and does not take the next episode's return."""
    agent = make_agent(AWRAgent, "ft_awr_diffusion_mlp", pretrained, tmp_path)
    rollout, _, _ = agent.collect_rollout(agent.reset_envs())
    agent.replay.add_rollout(rollout)
    data = agent.replay.ordered()
    no_ends = torch.zeros_like(data["ends"])
    plain = dict(data, ends=no_ends, terminated=no_ends, firsts=no_ends.clone(), cut=no_ends)
    start, end = copy.copy(plain), copy.copy(plain)
    start["firsts"] = no_ends.clone()
    start["firsts"][4, 0] = True
    end["ends"] = no_ends.clone()
    end["ends"][3, 0] = True
    with torch.no_grad():
        returns_start, returns_end, returns_plain = (agent.td_lambda(d)[0] for d in (start, end, plain))
    torch.testing.assert_close(returns_start, returns_end, rtol=0, atol=0)
    assert not torch.equal(returns_start, returns_plain), "the start changes the returns before it"


def test_dawr_critic_batches_reach_every_step_of_the_replay(pretrained, tmp_path):
    """DAWR's critic learns from minibatches of the whole replay. The reference draws them from the first
    (replay steps) rows of its (steps x envs) buffer, the oldest 1 / n_envs of it (README, "differs from the
    reference code on purpose"): here, with each step's observations set to the step's index, the critic's training
    batches hold steps of the replay's second half."""
    agent = make_agent(AWRAgent, "ft_awr_diffusion_mlp", pretrained, tmp_path, ["train.n_critic_warmup_itr=0"])
    rollout, _, _ = agent.collect_rollout(agent.reset_envs())
    n_steps = rollout.n_steps
    step_index = torch.arange(n_steps, dtype=torch.float32).view(n_steps, 1, 1, 1)
    rollout = dataclasses.replace(rollout, obs={"state": step_index.expand_as(rollout.obs["state"]).clone()})
    trained_on = []
    forward = agent.critic.forward

    def recording_forward(cond):
        if torch.is_grad_enabled():  # a training batch (TD(lambda) evaluates V without gradients)
            trained_on.append(cond["state"][:, 0, 0])
        return forward(cond)

    agent.critic.forward = recording_forward
    agent.learn(rollout)
    steps = torch.cat(trained_on)
    assert len(trained_on) > 1 and steps.max() >= n_steps // 2, steps.unique()


@pytest.mark.parametrize("agent_class,config_name,rate_key,target,source", [
    (DQLAgent, "ft_dql_diffusion_mlp", "tau", "critic_target", "critic"),
    (IDQLAgent, "ft_idql_diffusion_mlp", "tau", "target_q", "critic_q"),
])
@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_target_critic_follows_the_critic_at_the_polyak_rate(pretrained, tmp_path, agent_class, config_name,
                                                             rate_key, target, source, rate):
    """After an update the target critic is where Polyak averaging at `rate` puts it: rate 1 copies the critic's
    last weights, rate 0 keeps the target's first weights, while the critic itself moved."""
    agent = make_agent(agent_class, config_name, pretrained, tmp_path,
                       [f"train.{rate_key}={rate}", "train.n_critic_warmup_itr=0", "train.batch_size=4"])
    first_target = copy.deepcopy(getattr(agent, target).state_dict())
    first_critic = copy.deepcopy(getattr(agent, source).state_dict())
    rollout, _, _ = agent.collect_rollout(agent.reset_envs())
    metrics = agent.learn(rollout)
    assert metrics["gradient_steps"] > 1
    critic, target_state = getattr(agent, source).state_dict(), getattr(agent, target).state_dict()
    expected = critic if rate == 1.0 else first_target
    for key in expected:
        torch.testing.assert_close(target_state[key], expected[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(critic[key], first_critic[key]) for key in critic), "the critic moved"


class ForgetfulAgent(PPOAgent):
    """An algorithm written without calling anything at the end of its __init__."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.extra_critic = torch.nn.Linear(2, 2)


class HiddenModulesAgent(PPOAgent):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.critics = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]


def test_an_agent_starts_when_its_init_returns_with_every_module_it_built(pretrained, tmp_path):
    """The run dir opens and the checkpoint holds the module the subclass added after its parent's __init__: the
    start runs once, after the most derived __init__."""
    agent = make_agent(ForgetfulAgent, "ft_ppo_diffusion_mlp", pretrained, tmp_path)
    assert agent.logger is not None and (tmp_path / "config.yaml").exists()
    assert "extra_critic" in agent.checkpointed_modules()


def test_modules_in_a_plain_list_are_refused(pretrained, tmp_path):
    with pytest.raises(TypeError, match="HiddenModulesAgent.critics holds modules in a plain container"):
        make_agent(HiddenModulesAgent, "ft_ppo_diffusion_mlp", pretrained, tmp_path)


def test_an_actor_optimizer_of_any_name_waits_for_the_critic_warm_up(pretrained, tmp_path):
    """The LR schedule of an optimizer with role actor does not step during warm-up, whatever its name."""
    agent = make_agent(PPOAgent, "ft_ppo_diffusion_mlp", pretrained, tmp_path, ["train.n_critic_warmup_itr=2"])
    agent.add_optimizer("noise_actor", [torch.nn.Parameter(torch.zeros(1))], role="actor")
    agent.step_lr_schedulers()
    steps = {name: scheduler.state_dict()["last_epoch"] for name, scheduler in agent.lr_schedulers.items()}
    assert steps["noise_actor"] == steps["actor"] == 0 and steps["critic"] == 1, steps
