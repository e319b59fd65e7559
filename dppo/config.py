"""Config helpers: OmegaConf resolvers and early validation with clear errors.

Resolvers usable in YAML after `register_resolvers()`:
- `${eval:'${horizon_steps} * ${action_dim}'}`: a Python arithmetic expression;
- `${round_up:${x}}` / `${round_down:${x}}`: ceil / floor to an int;
- `${data_dir:}` / `${log_dir:}`: roots of data and runs (see dppo/paths.py);
- `${default_device:}`: 'cuda' when a GPU is visible, else 'cpu';
- `${default_precision:${device}}`: 'bf16' where the device multiplies bf16 natively, else 'fp32';
- `${now:%Y-%m-%d}`: the start time, as in Hydra.
"""

import math
import os
from dataclasses import dataclass
from datetime import datetime

from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from dppo.errors import ConfigError, require
from dppo.paths import data_dir, log_dir
from dppo.precision import PRECISIONS, default_precision
from dppo.runtime import default_device
from dppo.schema import check_group, check_present, check_renamed, check_targets, setting


@dataclass
class RunSettings:
    """The top-level settings of a run (cfg/common.yaml, cfg/finetune.yaml, the task file, the preset), checked where
    the config holds them."""

    seed: int = setting("the run's seed (torch, numpy, the envs)", low=0)
    threads: int | None = setting("torch threads of the job (null: torch's default)", low=1)
    precision: str = setting("the update's precision (bf16 where the hardware multiplies bf16 natively)",
                              choices=PRECISIONS)
    obs_dim: int = setting("state dimensions of the task", low=1)
    action_dim: int = setting("action dimensions of the task", low=1)
    max_episode_steps: int = setting("the task's time limit in env steps", low=1)
    horizon_steps: int = setting("actions in a chunk the policy predicts", low=1)
    cond_steps: int = setting("observations the policy conditions on", low=1)
    act_steps: int = setting("actions of a chunk the env executes", low=1)
    denoising_steps: int = setting("the diffusion chain's steps", low=1)
    ft_denoising_steps: int = setting("denoising steps fine-tuned (the chain's last ones)", low=1)
    use_ddim: bool = setting("sample by DDIM (ddim_steps) instead of DDPM")
    ddim_steps: int | None = setting("DDIM steps (with use_ddim)", low=1)


DIFFUSION_ONLY_KEYS = ("denoising_steps", "ft_denoising_steps", "use_ddim", "ddim_steps")
EVAL_NAMES = {"abs": abs, "int": int, "float": float, "max": max, "min": min, "round": round, "math": math}


def eval_expression(expression: str):
    """Value of a config expression such as `'4 * 3 // 2'` (builtins limited to `EVAL_NAMES`)."""
    try:
        return eval(expression, {"__builtins__": {}}, dict(EVAL_NAMES))
    except Exception as e:
        raise ConfigError(
            f"Cannot evaluate ${{eval:'{expression}'}} ({type(e).__name__}: {e}): "
            "write a Python arithmetic expression of numbers and interpolations."
        ) from e


def register_resolvers() -> None:
    """Register the `eval`, `round_up` and `round_down` resolvers (safe to call many times)."""
    OmegaConf.register_new_resolver("eval", eval_expression, replace=True)
    OmegaConf.register_new_resolver("round_up", lambda x: math.ceil(float(x)), replace=True)
    OmegaConf.register_new_resolver("round_down", lambda x: math.floor(float(x)), replace=True)
    if not OmegaConf.has_resolver("now"):  # Hydra registers it only inside @hydra.main; compose() needs it too
        OmegaConf.register_new_resolver("now", lambda pattern: datetime.now().strftime(pattern), use_cache=True)
    OmegaConf.register_new_resolver("data_dir", data_dir, replace=True)
    OmegaConf.register_new_resolver("log_dir", log_dir, replace=True)
    OmegaConf.register_new_resolver("default_device", default_device, replace=True)
    OmegaConf.register_new_resolver("default_precision", default_precision, replace=True)


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cfg")


def task_names(family: str | None = None) -> list[str]:
    """The tasks in cfg/task/, by file name; with `family`, those whose env.family it is."""
    names = sorted(name[: -len(".yaml")] for name in os.listdir(os.path.join(CONFIG_DIR, "task"))
                   if name.endswith(".yaml"))
    return names if family is None else [name for name in names if load_task_config(name).env.family == family]


def load_task_config(task: str) -> DictConfig:
    """cfg/task/<task>.yaml, resolved (for scripts outside Hydra, such as the demo makers)."""
    path = os.path.join(CONFIG_DIR, "task", f"{task}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"Unknown task '{task}': use one of {', '.join(task_names())}, or add cfg/task/{task}.yaml.")
    register_resolvers()
    cfg = OmegaConf.load(path)
    OmegaConf.resolve(cfg)
    return cfg


def check_keys(cfg: DictConfig | dict, keys: list[str], where: str) -> None:
    """Raise ConfigError naming the first of `keys` (dotted paths allowed) that is absent or `???` in `cfg`."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    absent = object()
    for key in keys:
        if OmegaConf.select(cfg, key, default=absent) is absent:
            raise ConfigError(
                f"{where} needs config key '{key}', which is missing: add '{key}' to the config "
                f"or pass ++{key}=... on the command line."
            )


def drop_keys_the_policy_ignores(cfg: DictConfig, overridden: frozenset[str]) -> None:
    """Under a policy without denoising steps (policy_name flow or gaussian) the diffusion chain's keys mean nothing:
    one the command line sets (`overridden`) is refused with one line; one a preset composed (PPO's
    ft_denoising_steps) is dropped, so the run's config.yaml holds only what the run uses."""
    policy = cfg.get("policy_name")
    if policy in (None, "diffusion"):
        return
    for key in DIFFUSION_ONLY_KEYS:
        if key in cfg:
            require(key not in overridden, f"{key}={cfg[key]} means nothing for policy={policy}, which has no "
                    "denoising steps: drop it (the flow policy's steps: model.inference_steps).")
            with open_dict(cfg):
                del cfg[key]


def validate_config(cfg: DictConfig, overridden: frozenset[str] = frozenset()) -> None:
    """Checks run at start-up, before anything is built, each failing with one line that names the fix: keys the
    composed policy ignores (`overridden`: the keys the command line set), the config groups the agent declares a
    schema for (dppo/schema.py) and every object a group builds (its constructor's signature), then the settings that
    depend on each other."""
    check_keys(cfg, ["_target_", "seed", "device", "logdir"], where="Every config")
    drop_keys_the_policy_ignores(cfg, overridden)
    check_renamed(cfg)
    check_present(cfg, RunSettings)
    for group, schema in getattr(get_class(cfg._target_), "settings_schemas", dict)().items():
        check_group(cfg, group, schema)
    check_targets(cfg)
    if "env" in cfg and "max_episode_steps" in cfg:
        require(OmegaConf.select(cfg, "env.kwargs.max_episode_steps") == cfg.max_episode_steps,
                f"max_episode_steps={cfg.max_episode_steps} does not reach the env: the task file's env.kwargs must "
                "pass it on (env: kwargs: max_episode_steps: ${max_episode_steps}).")
    if cfg.get("use_ddim"):
        require(cfg.get("ddim_steps") is not None, "use_ddim=true needs ddim_steps: add ddim_steps=5 (or another count).")
    if "ft_denoising_steps" in cfg and "denoising_steps" in cfg:  # a diffusion policy
        sampling_steps = cfg.ddim_steps if cfg.get("use_ddim") else cfg.denoising_steps
        require(0 < cfg.ft_denoising_steps <= sampling_steps,
                f"ft_denoising_steps={cfg.ft_denoising_steps} must be in 1..{sampling_steps} (the number of "
                f"{'DDIM' if cfg.get('use_ddim') else 'denoising'} steps): lower ft_denoising_steps.")
    if "act_steps" in cfg and "horizon_steps" in cfg:
        require(0 < cfg.act_steps <= cfg.horizon_steps,
                f"act_steps={cfg.act_steps} must be in 1..horizon_steps ({cfg.horizon_steps}): lower act_steps.")
    require(str(cfg.device).split(":")[0] in ("cpu", "cuda", "mps"),
            f"device={cfg.device} is not a torch device: use device=cpu or device=cuda.")
    require(not str(cfg.device).startswith("cuda") or default_device() == "cuda",
            f"device={cfg.device} but torch sees no GPU here: use device=cpu (or leave device unset: a GPU when "
            "one is visible, else the CPU).")


def startup_error_line(error: Exception) -> str:
    """A start-up error as one line: type and first line of the root cause of a Hydra instantiation error."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"
