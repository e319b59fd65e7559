"""The single entry point: compose a Hydra config from cfg/, instantiate its `_target_` agent, call `run()`.

    python script/run.py --config-name=pre_diffusion_mlp            # default task (hopper)
    python script/run.py --config-name=ft_ppo_diffusion_mlp task=walker2d
    python script/run.py --config-name=ft_ppo_diffusion_mlp --multirun task=hopper,walker2d seed=0,1,2
    python script/run.py --config-name=ft_ppo_diffusion_mlp --multirun 'task=glob(*)' seed=0,1 \
        hydra/launcher=joblib hydra.launcher.n_jobs=2
    torchrun --nproc_per_node=2 script/run.py --config-name=pre_diffusion_mlp     # pre-training on 2 processes

A multirun takes Hydra's whole sweep syntax and any launcher (basic, joblib, submitit_local,
submitit_slurm); when it ends, summary.csv / summary.md are written in its sweep dir (dppo/sweep.py).
"""

import difflib
import os
import sys

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import ConfigCompositionException, HydraException, InstantiationException
from omegaconf import DictConfig, OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Jobs that run in other processes (joblib workers, submitit jobs, env workers) import the repo's modules too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
# Idle OpenMP threads spin briefly, then sleep (dppo/openmp.py): read when torch loads, so set before any import of it.
from dppo.openmp import set_openmp_wait_defaults  # noqa: E402

set_openmp_wait_defaults()

if __name__ == "__main__":  # tcmalloc where installed (dppo/allocator.py): re-executes this script once, first
    from dppo.allocator import use_tcmalloc

    use_tcmalloc()

from dppo.config import ConfigError, register_resolvers, startup_error_line, validate_config  # noqa: E402
from dppo.distributed import adopt_slurm_tasks, peer_failure, world_size  # noqa: E402
from dppo.divergence import NonFiniteError  # noqa: E402
from dppo.runtime import job_threads, parallel_jobs, set_threads  # noqa: E402
from dppo.sweep import in_multirun, record_job  # noqa: E402

register_resolvers()
CONFIG_DIR = os.path.join(REPO, "cfg")
DEFAULT_CONFIG = "pre_diffusion_mlp"


class JobFailed(RuntimeError):
    """A multirun job failed at start-up or diverged: Hydra marks it failed and the other jobs still run."""


def check_task_overrides(argv: list[str]) -> None:
    """Exit with one line when a `task=` override names no file in cfg/task (Hydra's own message spans many
    lines). Overrides are read with Hydra's parser, so every sweep form (a,b / choice / glob / range) passes
    through; a glob is left to Hydra, since it only matches existing tasks."""
    known = sorted(name[:-5] for name in os.listdir(os.path.join(CONFIG_DIR, "task")) if name.endswith(".yaml"))
    try:
        overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_known_args(argv)[0].overrides)
    except HydraException:
        return  # a syntax error: Hydra reports it itself
    for override in overrides:
        if override.key_or_group != "task" or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            continue
        tasks = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(override.value())]
        for task in tasks:
            if task not in known:
                sys.exit(f"Unknown task '{task}': use one of {', '.join(known)} (configs in cfg/task/).")


def setting_keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config's nodes and leaves (interpolations left unresolved)."""
    keys = []
    for key, value in node.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += setting_keys(value, f"{prefix}{key}.")
    return keys


def composition_error_line(error: ConfigCompositionException, argv: list[str]) -> str:
    """One line for a command line Hydra cannot compose (its own message spans several). A key the config lacks
    gets the nearest keys it has: the config is composed again without that override to list them."""
    key = getattr(error.__cause__, "full_key", None)
    if not key:  # e.g. a group option that does not exist: Hydra's paragraphs, its search path left out
        paragraphs = []
        for paragraph in str(error).split("\n\n"):
            lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
            lines = lines[:next((i for i, line in enumerate(lines) if line.startswith("Config search path")), None)]
            if lines:
                paragraphs.append(f"{lines[0]} {', '.join(lines[1:])}" if lines[0].endswith(":") else " ".join(lines))
        return "ConfigError: " + "; ".join(paragraphs)
    args = get_args_parser().parse_known_args(argv)[0]
    others = [override for override in args.overrides if override.lstrip("+~").split("=", 1)[0] != key]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(args.config_name or DEFAULT_CONFIG, others)
    matches = difflib.get_close_matches(key, setting_keys(OmegaConf.to_container(cfg, resolve=False)), n=3, cutoff=0.8)
    hint = f"did you mean {' or '.join(matches)}? " if matches else ""
    return (f"ConfigError: {key} is not a setting of this config: {hint}docs/SETTINGS.md lists them "
            f"(+{key}=... adds a new key).")


def overridden_keys() -> frozenset[str]:
    """The config keys this job's command line sets (`key=value`, `+key=value`, `++key=value`)."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return frozenset(override.split("=", 1)[0].lstrip("+~") for override in overrides)


def fail(line: str) -> None:
    """Stop a single run with one line; in a multirun, fail only this job."""
    if in_multirun():
        raise JobFailed(line)
    sys.exit(line)


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name=DEFAULT_CONFIG)
def main(cfg: DictConfig) -> None:
    try:
        n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
        threads = job_threads(cfg.get("threads"), parallel_jobs(n_jobs))
        if threads is not None:
            set_threads(threads)
        validate_config(cfg, overridden_keys())
        agent_class = hydra.utils.get_class(cfg._target_)
        adopt_slurm_tasks()
        if world_size() > 1 and not getattr(agent_class, "supports_torchrun", False):
            raise ConfigError(f"{cfg._target_} runs in one process: use torchrun with a pre-training or fine-tuning "
                              "config (pre_*, ft_*).")
        agent = agent_class(cfg)
    except (ConfigError, FileNotFoundError, ValueError, InstantiationException) as error:
        fail(startup_error_line(error))
    record_job(getattr(agent, "logdir", cfg.logdir), threads)
    try:
        agent.run()
    except NonFiniteError as error:
        fail(str(error))
    except RuntimeError as error:
        if world_size() == 1 or not peer_failure(error):
            raise
        fail(f"Rank {os.environ.get('RANK', '?')} stopped: another process of this job went away "
             f"({startup_error_line(error)[:160]}); "
             "its own error, and torchrun's summary, say why. The last checkpoint resumes the run with resume=auto.")


if __name__ == "__main__":
    check_task_overrides(sys.argv[1:])
    single_run = not {"-m", "--multirun"} & set(sys.argv[1:])
    if not single_run:
        main()
    else:  # Hydra raises its composition errors instead of printing them, so that they get one line
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        try:
            main()
        except ConfigCompositionException as error:
            sys.exit(composition_error_line(error, sys.argv[1:]))
