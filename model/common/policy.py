"""The surface of every policy over action chunks (diffusion, flow, Gaussian), declared once.

Two levels, each an abstract base class whose `__init_subclass__` refuses a concrete subclass that
forgot part of its contract (checked when the class is defined, not when an agent first calls it):

- `ChunkPolicy`, what pre-training and evaluation need: the behaviour-cloning loss and deterministic acting.
- `FinetunePolicy`, what fine-tuning algorithms need on top: exploring with what the rollout stores,
  the log-probabilities of what was stored (PPO), a differentiable sample (DQL), the trained parameters.

The algorithms (agent/finetune/, model/rl/) are written against these methods only, never against
one policy class, so every algorithm runs on every policy whose math allows it.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from dppo.checkpoint import load_state_dict_checked
from model.common.pretrained import pretrained_network_state


@dataclass
class Sample:
    """actions: (B, Ta, Da) final chunk; chains: (B, C + 1, Ta, Da) last C steps' inputs/outputs, or None;
    chain_means, chain_log_vars: (B, C, Ta, Da) mean and log-variance of the Gaussian step that drew each chain
    entry after the first (the policy's, before any sampling-std floor), or None."""

    actions: torch.Tensor
    chains: torch.Tensor | None = None
    chain_means: torch.Tensor | None = None
    chain_log_vars: torch.Tensor | None = None


class _DeclaredSurface(ABC):
    """Refuses, at class definition, a concrete subclass that leaves an abstract method of its surface open.

    A class that means to stay abstract says so with `abstract = True` in its body.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        # ABCMeta computes __abstractmethods__ only after this hook runs, so look at the attributes themselves
        missing = sorted(name for name in dir(cls) if getattr(getattr(cls, name, None), "__isabstractmethod__", False))
        if missing:
            raise TypeError(f"{cls.__name__} does not implement {', '.join(missing)} of the policy surface "
                            f"({cls.__mro__[1].__name__}): write them, or set `abstract = True` in the class.")


class ChunkPolicy(_DeclaredSurface, nn.Module):
    """A network over action chunks (B, Ta, Da) conditioned on observations cond = {"state": (B, To, Do), ...}.

    Surface: `per_sample_bc_loss(actions, cond)` (behaviour cloning, (B,)), `bc_loss` (its mean),
    `act(cond)` (deterministic chunks for evaluation), `explore(cond) -> (actions, stored)` and
    `explore_actions(cond)` (the chunks alone). `network_path` (a pre-training checkpoint or shipped policy file)
    initializes `network`. A policy that samples from noise (`decodes_noise`) takes the chain's initial noise
    (B, Ta, Da) as `act(cond, noise)` and decodes it deterministically, so DSRL can steer it.
    """

    abstract = True
    decodes_noise = False  # whether `act(cond, noise)` decodes a given initial noise (B, Ta, Da) into the chunk

    def __init__(self, network: nn.Module, horizon_steps: int, obs_dim: int, action_dim: int, cond_steps: int = 1,
                 randn_clip_value: float = 10.0, final_action_clip_value: float | None = 1.0,
                 network_path: str | None = None):
        super().__init__()
        if network_path is not None:
            self.load_pretrained(network, network_path)
        self.network = network
        self.horizon_steps = horizon_steps
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.cond_steps = cond_steps
        self.randn_clip_value = randn_clip_value
        self.final_action_clip_value = final_action_clip_value

    @staticmethod
    def load_pretrained(network: nn.Module, path: str) -> None:
        """Load the network weights of a pre-training checkpoint; keys and shapes must match exactly."""
        load_state_dict_checked(network, pretrained_network_state(path), what=path)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def clip_final(self, actions: torch.Tensor) -> torch.Tensor:
        """Clip the final chunk to +-final_action_clip_value (no clipping when it is None)."""
        if self.final_action_clip_value is None:
            return actions
        return actions.clamp(-self.final_action_clip_value, self.final_action_clip_value)

    def bc_loss(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        """Behaviour-cloning loss of demonstrated chunks (B, Ta, Da): the mean of `per_sample_bc_loss`."""
        return self.per_sample_bc_loss(actions, cond).mean()

    @abstractmethod
    def per_sample_bc_loss(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        """The behaviour-cloning loss of each chunk: actions (B, Ta, Da) -> (B,). Weighted regression weighs it."""

    @abstractmethod
    def act(self, cond: dict) -> torch.Tensor:
        """Deterministic action chunks (B, Ta, Da), for evaluation."""

    @abstractmethod
    def explore(self, cond: dict) -> tuple[torch.Tensor, dict]:
        """Exploring chunks (B, Ta, Da) and {key: (B, ...)} the rollout stores beside them."""

    def explore_actions(self, cond: dict) -> torch.Tensor:
        """Exploring chunks (B, Ta, Da) alone, for algorithms that store nothing beside them (DQL's TD target,
        IDQL's candidates). A policy whose `explore` computes extra things to store skips them here."""
        return self.explore(cond)[0]


class FinetunePolicy(ChunkPolicy):
    """A ChunkPolicy that fine-tuning algorithms can train.

    `explore(cond) -> (actions, stored)`: exploring chunks and what the rollout keeps beside each (a denoising
    chain, the chunk itself) with its log-probabilities under "log_probs" where the policy has them.
    `log_probs_and_entropy(cond, stored)`: (B, n_log_prob_terms) log-probabilities of what explore stored under
    the current weights, and the entropy term (B,) where the policy has a learned, tractable one, else None.
    A chain policy gives one term per fine-tuned denoising step (PPO then clips each with its own coefficient
    and discounts it by its distance to the action: model/rl/ppo.py); a whole-chunk policy gives one.
    `sample_differentiable(cond)`: exploring chunks with the graph back to `actor_parameters()` (DQL).
    `bc_reference_log_probs(cond)`: log-probabilities, under the fine-tuned policy, of chains drawn by the frozen
    pre-trained one (PPO's optional BC regularizer), for policies that keep such a copy (`has_bc_reference`).
    """

    abstract = True
    has_entropy = False  # whether log_probs_and_entropy returns an entropy that depends on the weights

    @property
    @abstractmethod
    def n_log_prob_terms(self) -> int:
        """Columns of `log_probs_and_entropy`'s log-probabilities: K' for a chain policy, 1 for a whole-chunk one."""

    @abstractmethod
    def actor_parameters(self) -> list[nn.Parameter]:
        """The parameters fine-tuning trains."""

    @abstractmethod
    def log_probs_and_entropy(self, cond: dict, stored: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n_log_prob_terms) log-probabilities of `stored` and the entropy (B,) or None."""

    @abstractmethod
    def sample_differentiable(self, cond: dict) -> torch.Tensor:
        """Exploring chunks (B, Ta, Da) whose graph reaches `actor_parameters()`."""

    def log_probs(self, cond: dict, stored: dict) -> torch.Tensor:
        """(B, n_log_prob_terms) log-probabilities of what `explore` stored."""
        return self.log_probs_and_entropy(cond, stored)[0]

    def bc_reference_log_probs(self, cond: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} keeps no frozen pre-trained copy to regularize towards: "
                                  "set train.use_bc_loss=false.")

    @property
    def has_bc_reference(self) -> bool:
        """Whether `bc_reference_log_probs` is implemented (PPO's use_bc_loss needs it)."""
        return type(self).bc_reference_log_probs is not FinetunePolicy.bc_reference_log_probs

    def set_training_progress(self, fraction: float) -> None:
        """Called before each fine-tuning iteration with the fraction (0..1) of iterations done, for policies
        whose settings follow a schedule (ReinFlow's noise bound); nothing by default."""
