"""The queue of negative keys: a FIFO dictionary of K encoded keys (MoCo, section 3.2).

Kept as module buffers so it lives on the training device, moves with
`.to(device)` and is saved in every checkpoint together with its pointer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op("mocolab::snapshot", mutates_args=())
def snapshot(keys: torch.Tensor) -> torch.Tensor:
    """A copy of `keys` that a compiler keeps as a copy (eager: `keys.clone()`).

    The loss reads the queue, the enqueue then overwrites it, and the backward pass needs what the loss read. A
    plain `clone()` says so in eager mode, but inductor (torch 2.14, the whole step compiled) saved the queue
    buffer itself for the backward pass instead of the clone, so the backward read the queue after the enqueue:
    gradients 30% off, the loss unchanged (the bug pytorch/pytorch#197039 fixes in the partitioner). An opaque
    operator cannot be elided or recomputed, so its output is what the backward keeps
    (tests/test_moco.py compares a step compiled by inductor with eager).
    """
    return keys.clone()


@snapshot.register_fake
def _(keys: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(keys)


class KeyQueue(nn.Module):
    """K keys of `dim` dimensions, initialised as random unit vectors, with a write pointer.

    `enqueue(k)` overwrites the oldest len(k) slots. In a multi-process run, k is
    the keys of the whole global batch (gathered in rank order), so every
    process holds the same queue.
    """

    def __init__(self, K: int = 65536, dim: int = 128):
        super().__init__()
        self.K = K
        self.register_buffer("keys", F.normalize(torch.randn(K, dim), dim=1))  # keys: K x dim
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # For the diagnostics: the enqueue call (training step) that wrote each slot;
        # -1 marks the initial random keys, which are not encodings of any image.
        self.register_buffer("written_at", torch.full((K,), -1, dtype=torch.long))
        self.register_buffer("enqueues", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Write the B keys k (B x dim) at the pointer and advance it by B (mod K)."""
        B = k.shape[0]
        if self.K % B:
            raise ValueError(f"queue size K={self.K} is not divisible by the {B} keys enqueued per step")
        # Slot indices computed on the device: no host sync, so the step stays asynchronous.
        slots = (self.ptr + torch.arange(B, device=self.keys.device)) % self.K  # slots: B
        self.keys.index_copy_(0, slots, k.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + B) % self.K)
        self.written_at.index_copy_(0, slots, self.enqueues.expand(B))
        self.enqueues += 1

    def snapshot(self) -> torch.Tensor:
        """The K keys as they are now (K x dim), a copy that a later enqueue leaves as it was."""
        return snapshot(self.keys)

    @torch.no_grad()
    def age_stats(self) -> torch.Tensor:
        """[mean age, oldest age, fraction of initial random keys], ages in steps (0: this step's keys).

        A device tensor (no host sync). Once the queue is full, the ages are spread
        evenly over 0 .. K/B - 1 steps for B keys enqueued per step.
        """
        real = self.written_at >= 0
        age = (self.enqueues - 1 - self.written_at).float()  # age: K
        n_real = real.sum().clamp(min=1)
        mean_age = torch.where(real, age, 0.0).sum() / n_real
        oldest = torch.where(real, age, 0.0).max()
        return torch.stack([mean_age, oldest, 1.0 - real.float().mean()])

    def extra_repr(self) -> str:
        return f"K={self.K}, dim={self.keys.shape[1]}"
