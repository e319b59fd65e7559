"""Task families: how the single env of a task is built from its config (`env.family`, `env.id`, `env.kwargs`).

Every family returns a gymnasium env whose observations are dicts: "state" (Do,) float32 and, for
pixel tasks, "rgb" (3 * views, H, W) uint8, and whose `info["success"]` (when the family has a
notion of success) says whether the task is solved. The vector env knows no family; it calls
`make_family_env`. A family's module is imported only when used, so Gym runs never import robosuite or metaworld.
"""

import importlib

import gymnasium as gym

ENV_FAMILIES = {
    "gym": ("env.gym_locomotion", "make_gym_env", "check_gym_env_id"),
    "robosuite": ("env.robosuite_env", "make_robosuite_env", "robosuite_task"),
    "metaworld": ("env.metaworld_env", "make_metaworld_env", "metaworld_task"),
}


def _family(family: str) -> tuple[str, str, str]:
    if family not in ENV_FAMILIES:
        raise ValueError(f"Unknown env family '{family}': set env.family in the task config to one of "
                         f"{', '.join(sorted(ENV_FAMILIES))}.")
    return ENV_FAMILIES[family]


def check_env(family: str, env_id: str) -> None:
    """Raise a one-line error for an unknown family or env id before any worker process starts."""
    module, _, check = _family(family)
    getattr(importlib.import_module(module), check)(env_id)


def make_family_env(family: str, env_id: str, seed: int | None = None, render_mode: str | None = None,
                    **kwargs) -> gym.Env:
    """One env of `family` with dict observations (see the module docstring); `kwargs` go to the family's maker."""
    module, make, _ = _family(family)
    return getattr(importlib.import_module(module), make)(env_id, seed=seed, render_mode=render_mode, **kwargs)
