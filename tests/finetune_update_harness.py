"""One fine-tuning update on fixed collected steps, on one process or under torchrun: the harness of
tests/test_distributed_finetune.py.

    python tests/finetune_update_harness.py collect STEPS.pt CONFIG [overrides ...]
    [torchrun --nproc_per_node=W] python tests/finetune_update_harness.py update STEPS.pt OUT.pt CONFIG [overrides ...]

`collect`: one process rolls out one iteration and saves its steps (T, N, ...). `update`: each rank takes its
envs' columns of those steps (rank r: envs r * n_envs ... (r + 1) * n_envs - 1), and the agent assembles
the iteration's rollout (gathered over ranks, rewards scaled) and learns from it as `run` does; rank 0 saves
the weights of every module, the reward scaler and the metrics.
"""

import os
import sys

import hydra
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))
sys.path.insert(0, TESTS)

from conftest import compose_config  # noqa: E402

from dppo.config import validate_config  # noqa: E402
from dppo.distributed import close_distributed  # noqa: E402

STEP_FIELDS = ("obs", "next_obs", "actions", "stored", "rewards", "terminated", "ends", "firsts", "cut")


def env_columns(x, start: int, stop: int):
    """Envs start..stop-1 of (T, N, ...) steps (a tensor or a dict of them)."""
    if isinstance(x, dict):
        return {key: env_columns(value, start, stop) for key, value in x.items()}
    return x[:, start:stop]


def build_agent(config_name: str, overrides: list[str]):
    cfg = compose_config(config_name, overrides)
    validate_config(cfg)
    return hydra.utils.get_class(cfg._target_)(cfg)


def main() -> None:
    mode = sys.argv[1]
    if mode == "collect":
        steps_path, config_name, *overrides = sys.argv[2:]
        agent = build_agent(config_name, overrides)
        rollout, _, _ = agent.collect_rollout(agent.reset_envs())
        torch.save({field: getattr(rollout, field) for field in STEP_FIELDS}, steps_path)
    else:
        steps_path, out_path, config_name, *overrides = sys.argv[2:]
        agent = build_agent(config_name, overrides)
        start = agent.env_offset
        steps = env_columns(torch.load(steps_path, weights_only=True), start, start + agent.n_envs)
        metrics = agent.learn(agent.assemble_rollout(steps))
        if agent.rank.is_main:
            torch.save({"modules": {name: module.state_dict() for name, module in agent.checkpointed_modules().items()},
                        "reward_scaler": agent.reward_scaler.state_dict() if agent.reward_scaler else None,
                        "metrics": metrics}, out_path)
    agent.venv.close()
    close_distributed()


if __name__ == "__main__":
    main()
