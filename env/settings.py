"""The `env` settings of fine-tuning runs (cfg/finetune.yaml, the task files), read by env/vector.py."""

from dataclasses import dataclass
from typing import Any

from dppo.schema import setting
from env.families import ENV_FAMILIES


@dataclass
class EnvSettings:
    family: str = setting("the task family", choices=tuple(ENV_FAMILIES))
    id: str = setting("the family's env id (gymnasium id, robosuite env name, Meta-World task)")
    kwargs: dict[str, Any] = setting("keyword arguments of the family's env maker (e.g. max_episode_steps)")
    n_envs: int = setting("parallel envs", low=1)
    asynchronous: bool = setting("step the envs in worker processes (false: in the main process)")
    save_video: bool = setting("record evaluation videos into the run dir")
    overlap_rollout: bool = setting("two env groups, one sampling while the other's workers step")
