import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from dppo.config import ConfigError, check_keys, register_resolvers, require


def test_eval_resolver_computes_arithmetic_from_interpolations():
    register_resolvers()
    register_resolvers()  # idempotent
    cfg = OmegaConf.create(
        {
            "horizon_steps": 4,
            "action_dim": 3,
            "flat": "${eval:'${horizon_steps} * ${action_dim}'}",
            "half": "${eval:'${horizon_steps} / 8'}",
            "biggest": "${eval:'max(${horizon_steps}, ${action_dim}) + 1'}",
            "up": "${round_up:${half}}",
            "down": "${round_down:2.7}",
        }
    )
    assert cfg.flat == 12
    assert cfg.half == 0.5
    assert cfg.biggest == 5
    assert cfg.up == 1
    assert cfg.down == 2


def test_eval_resolver_reports_bad_expression():
    register_resolvers()
    cfg = OmegaConf.create({"bad": "${eval:'4 *'}", "unknown": "${eval:'open(1)'}"})
    with pytest.raises(InterpolationResolutionError, match="Cannot evaluate"):
        cfg.bad
    with pytest.raises(InterpolationResolutionError, match="NameError"):
        cfg.unknown


def test_require():
    require(True, "unused")
    with pytest.raises(ConfigError, match="set n_envs > 0"):
        require(False, "set n_envs > 0")
    assert issubclass(ConfigError, ValueError)


def test_check_keys_names_first_missing_key_and_place():
    cfg = OmegaConf.create({"train": {"lr": 1e-3, "n_epochs": "???"}, "seed": None, "env": {"name": "hopper"}})
    check_keys(cfg, ["train.lr", "seed", "env.name"], where="pretrain agent")
    with pytest.raises(ConfigError, match=r"^pretrain agent needs config key 'train.batch_size'"):
        check_keys(cfg, ["train.lr", "train.batch_size", "model.dim"], where="pretrain agent")
    with pytest.raises(ConfigError, match="'train.n_epochs'"):
        check_keys(cfg, ["train.n_epochs"], where="pretrain agent")
    with pytest.raises(ConfigError, match="'model.dim'"):
        check_keys({"model": {}}, ["model.dim"], where="model")


@pytest.mark.parametrize("algorithm", ["dql", "idql"])
def test_policy_flow_on_a_q_learning_preset_is_its_flow_preset_with_the_final_action_clip(compose_cfg, algorithm):
    """`policy=flow` is the one override that switches a preset's policy: on DQL / IDQL it carries the final action
    clip (the flow chain has no x0 clip) exactly as the flow preset does; PPO's flow policy keeps no clip."""
    switched = compose_cfg(f"ft_{algorithm}_diffusion_mlp", ["policy=flow", "device=cpu"])
    preset = compose_cfg(f"ft_{algorithm}_flow_mlp", ["device=cpu"])
    assert OmegaConf.to_container(switched.model, resolve=True) == OmegaConf.to_container(preset.model, resolve=True)
    assert preset.model.final_action_clip_value == 1.0
    assert compose_cfg("ft_ppo_flow_mlp", ["device=cpu"]).model.final_action_clip_value is None
    assert compose_cfg(f"ft_{algorithm}_diffusion_mlp", ["device=cpu"]).model.final_action_clip_value is None
