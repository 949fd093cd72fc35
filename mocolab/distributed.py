"""The collective operations MoCo needs, and the process-group set-up.

Every function works in a single process too (then it is local): the same
training code runs on one device, on N GPUs (NCCL) and on P CPU processes
(gloo). Processes are started by torch's own launchers (`mocolab.run.launch`
uses torch.distributed's elastic_launch; `torchrun` for several nodes), which
set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0 alone writes logs, metrics and checkpoints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True in a worker started by torchrun / elastic_launch (or srun), before the group exists."""
    _env_from_slurm()
    return int(os.environ.get("WORLD_SIZE", 1)) > 1 and "MASTER_ADDR" in os.environ


def init_process_group(use_cuda: bool, timeout_minutes: int = 60) -> None:
    """Join the process group described by the environment (NCCL on GPUs, gloo on CPUs).

    The timeout bounds how long a rank waits in a collective for a rank that died
    or is busy (rank 0 alone runs the kNN monitor while the others wait).
    """
    if dist.is_initialized():
        return
    _env_from_slurm()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))


def _env_from_slurm() -> None:
    """Under `srun python -m mocolab ...` (one task per GPU), read rank and size from SLURM.

    MASTER_ADDR and MASTER_PORT must still be exported by the job script (e.g. the
    first host of `scontrol show hostnames`); torchrun sets everything itself.
    """
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "MASTER_ADDR" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of x over all processes (x itself in one process)."""
    if is_distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenation of x from every process, in rank order (no gradient)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_keys(k: torch.Tensor) -> torch.Tensor:
    """Keys of the global batch, in rank order: what every process enqueues."""
    return all_gather_cat(k)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle BN's permutation; returns (this process's shuffled images, indices to undo it).

    One process: a local permutation (split BN supplies the per-"GPU" statistics).
    Several: the global batch is gathered, one permutation drawn on rank 0 is
    broadcast, and each rank encodes its slice of the permuted global batch, so a
    key is normalised with the BN statistics of other images than its query.
    """
    if not is_distributed():
        perm = torch.randperm(x.shape[0], device=x.device)
        unshuffle = torch.argsort(perm)
        # Row i gets x[perm[i]], written as a scatter of x's rows to unshuffle (perm's inverse): inductor in
        # torch 2.11 (the GPU machines' image) cannot compile x[perm] read straight from randperm.
        return torch.empty_like(x).index_copy_(0, unshuffle, x), unshuffle
    x_all = all_gather_cat(x)  # x_all: (W*B) x ...
    perm = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(perm, src=0)  # every rank uses rank 0's permutation
    B, r = x.shape[0], rank()
    return x_all[perm[r * B : (r + 1) * B]], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo `batch_shuffle`: this process gets the rows of its own original images."""
    if not is_distributed():
        return x[unshuffle]
    x_all = all_gather_cat(x)  # x_all: (W*B) x C, in shuffled global order
    B, r = x.shape[0], rank()
    return x_all[unshuffle[r * B : (r + 1) * B]]


def all_gather_objects(obj) -> list:
    """Every process's `obj` (any picklable value), in rank order; [obj] in one process."""
    if not is_distributed():
        return [obj]
    parts = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BN running statistics): the model rank 0 saves."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
