"""Data parallelism under torchrun: process group, the rank's device, its share of each batch, collectives.

    torchrun --nproc_per_node=2 script/run.py --config-name=pre_diffusion_mlp
    torchrun --nproc_per_node=2 script/run.py --config-name=ft_ppo_diffusion_mlp
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 script/run.py ...

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process. Every rank draws the same global
batches and trains on its slice of each; gradients are averaged over the ranks (by
DistributedDataParallel in pre-training, by `average_gradients` in fine-tuning, whose losses are
not one module's forward), so one optimizer step is the step of the global batch. Without torchrun
every function here is the single-process identity.
"""

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  before any group exists: see close_distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel

SLURM_PORT_BASE = 20000  # MASTER_PORT of a Slurm job: 20000 + job id mod 20000 (one port per job on shared nodes)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[03-05,7],cpu1' -> 'gpu03', 'node1,node2' -> 'node1'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        raise ValueError(f"Cannot read the Slurm node list '{nodelist}'.")
    prefix, ranges = match.groups()
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def adopt_slurm_tasks() -> None:
    """In a Slurm job step of several tasks (srun, or hydra/launcher=slurm with tasks_per_node / nodes) started
    without torchrun, make each task a rank: RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK =
    SLURM_LOCALID, the rendezvous on the job's first node (MASTER_ADDR) at a port derived from the job id. Does
    nothing under torchrun (WORLD_SIZE set) or outside such a step; idempotent."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
        return
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "localhost")
    os.environ.update({
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": os.environ["SLURM_NTASKS"],
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR", first_slurm_host(nodelist)),
        "MASTER_PORT": os.environ.get("MASTER_PORT",
                                      str(SLURM_PORT_BASE + int(os.environ.get("SLURM_JOB_ID", "0")) % SLURM_PORT_BASE)),
    })


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
    cuda:<LOCAL_RANK> on GPUs. Without torchrun: rank 0 of 1 on `device`. The tasks of a Slurm job step are
    ranks too (`adopt_slurm_tasks`)."""
    adopt_slurm_tasks()
    if world_size() == 1:
        return Rank(0, 1, device)
    if device.startswith("cuda"):  # one GPU per rank: its local rank's, or the only one Slurm left it
        device = f"cuda:{int(os.environ['LOCAL_RANK']) if torch.cuda.device_count() > 1 else 0}"
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


def gather_envs(x: torch.Tensor | dict, rank: Rank) -> torch.Tensor | dict:
    """Every rank's (T, N, ...) tensor (or dict of them) concatenated along the env axis, rank 0's envs first:
    (T, world_size * N, ...) on every rank. Bool tensors travel as uint8 (gloo has no bool)."""
    if rank.world_size == 1:
        return x
    if isinstance(x, dict):
        return {key: gather_envs(value, rank) for key, value in x.items()}
    sent = x.to(torch.uint8) if x.dtype == torch.bool else x.contiguous()
    parts = [torch.empty_like(sent) for _ in range(rank.world_size)]
    dist.all_gather(parts, sent)
    gathered = torch.cat(parts, dim=1)
    return gathered.bool() if x.dtype == torch.bool else gathered


def gather_objects(value, rank: Rank) -> list:
    """Every rank's `value` (any picklable object), in rank order."""
    if rank.world_size == 1:
        return [value]
    values = [None] * rank.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_tensor(x: torch.Tensor, rank: Rank) -> torch.Tensor:
    """Rank 0's tensor `x` on every rank (the others' `x` are overwritten): random draws every rank must share."""
    if rank.world_size > 1:
        dist.broadcast(x, src=0)
    return x


def average_gradients(parameters, rank: Rank) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one all-reduce of them all flattened)."""
    if rank.world_size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= rank.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_metrics_over_ranks(metrics: dict, rank: Rank) -> dict:
    """The mean over the ranks of every number in `metrics` (one all-reduce, in sorted key order, so that ranks whose
    dicts list the keys in another order still add value to value); other values as they are."""
    if rank.world_size == 1:
        return metrics
    keys = sorted(key for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool))
    total = torch.tensor([float(metrics[key]) for key in keys], dtype=torch.float64, device=rank.device)
    dist.all_reduce(total)
    return {**metrics, **{key: value / rank.world_size for key, value in zip(keys, total.tolist())}}


def any_rank(flag: bool, rank: Rank) -> bool:
    """Whether `flag` is true on any rank: one decision for all of them."""
    if rank.world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=rank.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


PEER_FAILURE_MARKS = ("Connection closed by peer", "Connection reset by peer", "NCCL", "gloo")


def peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank of the job went away."""
    return isinstance(error, dist.DistError) or any(mark in str(error) for mark in PEER_FAILURE_MARKS)


def close_distributed() -> None:
    """Leave the process group, if this process joined one, once every rank has come to leave it: a rank that
    tore its group down while another still finished (rank 0 writing its curves) could abort in gloo's threads.

    Destroying the group frees it, and its gloo threads end, only if nothing else holds it. torch.distributed.nn's
    functions take `group=group.WORLD` as a default argument, bound when that module is first imported, and torch
    imports it lazily (through torch._dynamo, at the first optimizer). Imported while a group existed, they held
    it for good: its threads outlived the interpreter's shutdown, and one of them freeing a collective's tensors
    then aborted the process ("terminate called without an active exception", about one torchrun run in 20).
    This module imports torch.distributed.nn before any group exists, so those defaults are None."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
