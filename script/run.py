"""The single entry point: compose a Hydra config from cfg/, instantiate its `_target_` agent, call `run()`.

    python script/run.py --config-name=pre_diffusion_mlp            # default task (hopper)
    python script/run.py --config-name=ft_ppo_diffusion_mlp task=walker2d
    python script/run.py --config-name=ft_ppo_diffusion_mlp --multirun task=hopper,walker2d seed=0,1,2
"""

import os
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dppo.config import ConfigError, register_resolvers, startup_error_line, validate_config  # noqa: E402
from dppo.divergence import NonFiniteError  # noqa: E402

register_resolvers()
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cfg")


def check_task_overrides(argv: list[str]) -> None:
    """Exit with one line when `task=...` names no file in cfg/task (Hydra's own message spans many lines)."""
    known = sorted(name[:-5] for name in os.listdir(os.path.join(CONFIG_DIR, "task")) if name.endswith(".yaml"))
    for arg in argv:
        if arg.startswith("task="):
            for task in arg[len("task="):].split(","):
                if task not in known:
                    sys.exit(f"Unknown task '{task}': use one of {', '.join(known)} (configs in cfg/task/).")


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="pre_diffusion_mlp")
def main(cfg: DictConfig) -> None:
    try:
        validate_config(cfg)
        agent = hydra.utils.get_class(cfg._target_)(cfg)
    except (ConfigError, FileNotFoundError, ValueError, InstantiationException) as error:
        sys.exit(startup_error_line(error))
    try:
        agent.run()
    except NonFiniteError as error:
        sys.exit(str(error))



if __name__ == "__main__":
    check_task_overrides(sys.argv[1:])
    main()
