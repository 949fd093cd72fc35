"""Which device a process trains on, and in which precision: shared by every job (pretraining, fine-tuning)."""

from __future__ import annotations

import contextlib

import torch

from .. import distributed as dist_
from ..settings import ConfigError


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(gpus: int) -> torch.device:
    """gpus -1: a GPU if present, else CPU; 0: CPU; N: this process's GPU of N. Fails before any work."""
    available = visible_gpus()
    if gpus == -1:
        return torch.device("cuda", dist_.local_rank()) if available else torch.device("cpu")
    if gpus == 0:
        return torch.device("cpu")
    if available == 0:
        raise ConfigError(f"gpus={gpus} but no CUDA GPU is visible to torch; use gpus=0 to train on the CPU")
    if gpus > available:
        raise ConfigError(f"gpus={gpus} but only {available} GPU(s) are visible; lower gpus")
    return torch.device("cuda", dist_.local_rank())  # this process's GPU


def resolve_precision(precision: str, device: torch.device):
    """Autocast dtype, or None for fp32. auto: bf16 on a GPU that supports it, else fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(f"precision={precision!r} needs a GPU; use 'fp32' or 'auto' on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a GPU's kernels run after their launch returns): before a clock is
    read. Nothing to wait for on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def side_stream(device) -> torch.cuda.Stream | None:
    """A CUDA stream of its own on `device`, for work a thread does beside the training stream; None off a GPU."""
    device = torch.device(device)
    return torch.cuda.Stream(device) if device.type == "cuda" else None


@contextlib.contextmanager
def working_on(stream: torch.cuda.Stream | None):
    """Run the block (in a thread of its own) on `stream` and on its device: a new thread's current CUDA device is
    device 0, whatever its process's. Nothing to set for None (the CPU)."""
    if stream is None:
        yield
        return
    with torch.cuda.device(stream.device), torch.cuda.stream(stream):
        yield
