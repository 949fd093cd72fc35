"""The collective operations MoCo needs, in their single-process form.

A multi-GPU run replaces these with their cross-process versions (gather keys
from every rank for the queue; shuffle the global key batch across GPUs). On
one device, shuffle BN is a local permutation of the batch, and split
BatchNorm (models.SplitBatchNorm) provides the per-"GPU" statistics.
"""
from __future__ import annotations

import torch


def gather_keys(k: torch.Tensor) -> torch.Tensor:
    """Keys of the global batch, in rank order. One process: the local keys."""
    return k


def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly permute the batch; returns (shuffled x, indices that undo the permutation).

    After shuffling, the key of image i is normalised with the BN statistics of a
    different sub-batch than its query, so BN cannot leak which key is positive.
    """
    perm = torch.randperm(x.shape[0], device=x.device)
    return x[perm], torch.argsort(perm)


def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Restore the original order of a batch shuffled by `batch_shuffle`."""
    return x[unshuffle]
