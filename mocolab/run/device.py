"""Which device a process trains on, and in which precision: shared by every job (pretraining, fine-tuning)."""

from __future__ import annotations

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
