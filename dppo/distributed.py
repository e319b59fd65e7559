"""Data-parallel pre-training under torchrun: process group, the rank's device, its share of each batch.

    torchrun --nproc_per_node=2 script/run.py --config-name=pre_diffusion_mlp
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 script/run.py ...

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process. Every rank draws the same global
batches (one permutation per epoch from the run's seed) and trains on its slice of each;
DistributedDataParallel averages the gradients, so one optimizer step is the step of the global
batch. Without torchrun every function here is the single-process identity.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    """Number of processes of the run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Rank:
    """Where this process stands in the run: `rank` of `world_size`, and the device it trains on."""

    rank: int
    world_size: int
    device: str

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, keeps the EMA and writes checkpoints."""
        return self.rank == 0


def init_distributed(device: str) -> Rank:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) and pick this rank's device:
    cuda:<LOCAL_RANK> on GPUs. Without torchrun: rank 0 of 1 on `device`."""
    if world_size() == 1:
        return Rank(0, 1, device)
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), device)


@contextmanager
def main_rank_first(rank: Rank):
    """Run the block on rank 0 before the other ranks, e.g. one that may write a file they all read."""
    if rank.world_size > 1 and not rank.is_main:
        dist.barrier()
    yield
    if rank.world_size > 1 and rank.is_main:
        dist.barrier()


def shard(indices: torch.Tensor, rank: Rank) -> torch.Tensor:
    """This rank's contiguous slice of a global batch of `indices` (B,) -> (about B / world_size,)."""
    return indices.tensor_split(rank.world_size)[rank.rank]


class ModelLoss(nn.Module):
    """`model.bc_loss(actions, cond)` as a forward pass, which is what DistributedDataParallel synchronizes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, actions: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.model.bc_loss(actions, cond)


def data_parallel_loss(model: nn.Module, rank: Rank) -> nn.Module:
    """A module whose forward is the model's loss; wrapped in DistributedDataParallel when there are several
    ranks (it broadcasts rank 0's weights now and averages gradients in every backward)."""
    loss = ModelLoss(model)
    if rank.world_size == 1:
        return loss
    return DistributedDataParallel(loss, device_ids=[rank.device] if rank.device.startswith("cuda") else None)


def mean_over_ranks(value: float, rank: Rank) -> float:
    """The mean of `value` over the ranks (the value itself on one process)."""
    if rank.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=rank.device)
    dist.all_reduce(total)
    return total.item() / rank.world_size


def broadcast_from_main(value, rank: Rank):
    """Rank 0's `value` (any picklable object) on every rank."""
    if rank.world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
