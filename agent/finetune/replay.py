"""Replay buffer of off-policy fine-tuning: the last `capacity` chunk-steps of every env."""

import torch

from agent.finetune.rollout import Rollout


def replay_gradient_steps(new_samples: int, batch_size: int, replay_ratio: float) -> int:
    """Gradient steps per iteration: new samples / batch size * replay ratio (at least one)."""
    return max(1, int(new_samples / batch_size * replay_ratio))


class ReplayBuffer:
    """Fixed capacity per env, time-ordered per env, on the run's device.

    Fields are (T, N, ...) tensors, or dicts of them (observations). Storage is a ring
    of `capacity` steps shared by the N envs, which always add steps together.
    Saved with checkpoints (`state_dict`), so a resumed run replays the same data.
    """

    def __init__(self, capacity: int, n_envs: int, device: str | torch.device):
        if capacity < 1:
            raise ValueError(f"Replay capacity must be >= 1 chunk-step per env, got {capacity}: raise buffer_size.")
        self.capacity = capacity
        self.n_envs = n_envs
        self.device = torch.device(device)
        self.data: dict[str, torch.Tensor] = {}  # flat keys such as "obs/state" -> (capacity, N, ...)
        self.pos = 0  # next row to write
        self.size = 0  # rows filled
        self._valid = None  # cached (row, env) pairs `sample` draws from

    def __len__(self) -> int:
        """Stored (step, env) samples."""
        return self.size * self.n_envs

    def add_rollout(self, rollout: Rollout) -> None:
        """Append a rollout: obs, next_obs, whole action chunks, what the agent's `explore` stored beside them (DSRL:
        the noise), scaled rewards, terminated, ends, firsts (episode starts, so that returns over the stored steps
        restart there) and cut (steps that never happened)."""
        self.add({"obs": rollout.obs, "next_obs": rollout.next_obs, "actions": rollout.actions, "stored": rollout.stored,
                  "rewards": rollout.scaled_rewards, "terminated": rollout.terminated, "ends": rollout.ends,
                  "firsts": rollout.firsts, "cut": rollout.cut})

    def add(self, fields: dict) -> None:
        """Append T steps of every field (T, N, ...); the oldest steps are overwritten when full."""
        flat = _flatten(fields)
        if not self.data:
            self.data = {key: torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=self.device)
                         for key, value in flat.items()}
        n_steps = next(iter(flat.values())).shape[0]
        keep = slice(max(0, n_steps - self.capacity), n_steps)  # more steps than capacity: keep the newest
        rows = ((self.pos + torch.arange(n_steps)) % self.capacity)[keep].to(self.device)
        for key, value in flat.items():
            self.data[key][rows] = value[keep].to(self.device)
        self.pos = (self.pos + n_steps) % self.capacity
        self.size = min(self.capacity, self.size + n_steps)
        self._valid = None

    def ordered(self) -> dict:
        """Everything stored, oldest step first: fields (size, N, ...)."""
        start = (self.pos - self.size) % self.capacity
        rows = ((start + torch.arange(self.size)) % self.capacity).to(self.device)
        return _unflatten({key: value[rows] for key, value in self.data.items()})

    def sample(self, batch_size: int, pick=None) -> dict:
        """batch_size (step, env) samples drawn uniformly with replacement among the steps that happened (cut steps
        are never drawn): fields (B, ...). `pick(n, batch_size)` draws the indices into the n such steps instead
        (under torchrun: rank 0's draw, this rank's share of it)."""
        if self.size == 0:
            raise RuntimeError("ReplayBuffer.sample called on an empty buffer: add a rollout first.")
        if self._valid is None:  # (n_valid, 2) storage (row, env) of the steps that happened, until the next add
            self._valid = self.data["cut"].logical_not().nonzero()
            self._valid = self._valid[self._filled_rows()[self._valid[:, 0]]]
        if len(self._valid) == 0:
            raise RuntimeError("Every replayed step was cut (worker restarts / simulator failures): nothing to learn "
                               "from; check the simulator.")
        if pick is None:
            indices = torch.randint(len(self._valid), (batch_size,), device=self.device)
        else:
            indices = pick(len(self._valid), batch_size)
        steps = self._valid[indices]
        return _unflatten({key: value[steps[:, 0], steps[:, 1]] for key, value in self.data.items()})

    def _filled_rows(self) -> torch.Tensor:
        """(capacity,) bool: the storage rows that hold a step."""
        filled = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)
        start = (self.pos - self.size) % self.capacity
        filled[(start + torch.arange(self.size, device=self.device)) % self.capacity] = True
        return filled

    def state_dict(self) -> dict:
        """The stored steps (oldest first) and the capacity; empty rows are not saved."""
        return {"capacity": self.capacity, "n_envs": self.n_envs, "data": _flatten(self.ordered()) if self.size else {}}

    def load_state_dict(self, state: dict) -> None:
        if (state["capacity"], state["n_envs"]) != (self.capacity, self.n_envs):
            raise ValueError(
                f"The saved replay buffer holds {state['capacity']} steps x {state['n_envs']} envs but this run has "
                f"{self.capacity} x {self.n_envs}: match train.buffer_size and env.n_envs to the checkpoint."
            )
        self.data, self.pos, self.size, self._valid = {}, 0, 0, None
        if state["data"]:
            self.add(_unflatten(state["data"]))


def _flatten(fields: dict, prefix: str = "") -> dict:
    """{"obs": {"state": x}, "rewards": r} -> {"obs/state": x, "rewards": r}."""
    flat = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix=f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _unflatten(flat: dict) -> dict:
    """Inverse of `_flatten`."""
    fields = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = fields
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return fields
