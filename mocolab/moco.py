"""MoCo v2: query encoder, momentum key encoder, queue of negatives, InfoNCE.

In the spirit of facebookresearch/moco's `builder.py`. One training step,
in the official order (docs/protocols.md section 1):

  1. momentum update of the key encoder from the query weights of the
     previous optimiser step:  theta_k = m * theta_k + (1 - m) * theta_q
  2. q = normalise(f_q(x_q));  k = normalise(f_k(x_k)) with shuffle BN, no gradient
  3. logits = [q.k+, q.queue] / T;  loss = cross-entropy with label 0
  4. enqueue the new keys (dequeuing the oldest)

then, outside, loss.backward() and the optimiser step on the query encoder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import batch_shuffle, batch_unshuffle, gather_keys
from .queue import KeyQueue


@dataclass
class MoCoOutput:
    """The loss and what a learner wants to watch; all are tensors (no host sync)."""

    loss: torch.Tensor  # scalar, with gradient
    acc: torch.Tensor  # instance-discrimination accuracy: fraction of queries whose positive wins
    pos_sim: torch.Tensor  # mean cosine similarity q.k+ of positive pairs
    neg_sim: torch.Tensor  # mean cosine similarity q.queue against the negatives
    features: torch.Tensor | None = None  # the query view's pooled backbone features, detached (online probe)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, T: float):
    """InfoNCE of unit vectors q (N x C) against positives k (N x C) and negatives queue (K x C).

    Returns (loss, logits); the positive is logit 0 of every row.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)  # l_pos: N x 1
    l_neg = q @ queue.T  # l_neg: N x K
    logits = torch.cat([l_pos, l_neg], dim=1) / T  # logits: N x (1+K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is index 0
    return F.cross_entropy(logits, labels), logits


@torch.no_grad()
def momentum_average_(theta_k, theta_q, m: float) -> None:
    """theta_k[i] <- m * theta_k[i] + (1 - m) * theta_q[i] for each pair of tensors, in place.

    Per tensor this is `theta_k[i].mul_(m).add_(theta_q[i], alpha=1 - m)`, bit for bit (tests/test_moco.py);
    written as two list operations it is 2 dispatched operations per step instead of 128 for ResNet-18 (326
    for ResNet-50), which on a GPU are 2 fused kernels instead of 128 launches, in a step of about 1,025
    operations that is bound by its launches. On the CPU both forms take the same time (5.9 ms for
    ResNet-18's parameters, 15-20 ms for ResNet-50's, one thread; benchmarks/momentum_update.py).
    """
    theta_k, theta_q = list(theta_k), list(theta_q)  # no_grad: theta_q is read, not recorded for autograd
    torch._foreach_mul_(theta_k, m)
    torch._foreach_add_(theta_k, theta_q, alpha=1.0 - m)


class MoCo(nn.Module):
    """Momentum Contrast around an encoder (see models.build_encoder).

    K: queue size; m: key-encoder momentum; T: temperature;
    symmetric: both crops act as query and as key (the demo's option), the
    two losses are summed and both key batches are enqueued;
    shuffle_bn: shuffle the key batch before the key encoder (with split BN
    on one device, or across GPUs).
    """

    def __init__(
        self,
        encoder: nn.Module,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.2,
        dim: int = 128,
        symmetric: bool = False,
        shuffle_bn: bool = True,
    ):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.symmetric, self.shuffle_bn = symmetric, shuffle_bn
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)  # starts as an exact copy of the query encoder
        self.encoder_k.requires_grad_(False)  # updated only by momentum, never by gradients
        self.queue = KeyQueue(K, dim)

    @property
    def query_encoder(self) -> nn.Module:
        """f_q, the encoder that learns: the one the optimiser updates, the kNN monitor and the evaluation
        read, and the export writes."""
        return self.encoder_q

    @property
    def key_encoder(self) -> nn.Module:
        """f_k, the momentum copy of f_q that encodes the keys."""
        return self.encoder_k

    def queue_stats(self) -> torch.Tensor:
        """The queue's diagnostics as one tensor: mean key age, oldest key, share of keys still random
        (KeyQueue.age_stats). A few kernels each time: the training loop reads it at log steps only."""
        return self.queue.age_stats()

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q (MoCo v1 eq. 2) for every parameter of the two encoders.
        BN buffers are not averaged: the key encoder keeps its own running statistics, as in the official code."""
        momentum_average_(self.encoder_k.parameters(), self.encoder_q.parameters(), self.m)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys of images x (N x C), with shuffle BN when enabled."""
        if self.shuffle_bn:
            x, unshuffle = batch_shuffle(x)
        k = F.normalize(self.encoder_k(x).to(self.queue.keys.dtype), dim=1)  # k: N x C, fp32 under autocast
        return batch_unshuffle(k, unshuffle) if self.shuffle_bn else k

    def contrastive_loss(self, x_q: torch.Tensor, x_k: torch.Tensor):
        z, h = self.encoder_q(x_q, with_features=True)  # h: the pooled backbone features the head read
        q = F.normalize(z.to(self.queue.keys.dtype), dim=1)  # q: N x C, fp32 like the queue
        k = self.encode_keys(x_k)  # k: N x C
        # A copy: enqueue() overwrites the queue before backward needs it. The logits stay fp32
        # under autocast: a bf16 cosine is off by ~4e-3, i.e. ~0.04 in a logit at T = 0.1.
        with torch.autocast(q.device.type, enabled=False):
            loss, logits = info_nce(q, k, self.queue.snapshot(), self.T)
        return loss, logits, k, h.detach()

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> MoCoOutput:
        """x_q, x_k: two augmented views of the same N images (N x 3 x H x W)."""
        self.momentum_update()
        if self.symmetric:
            loss_12, logits_12, k2, h = self.contrastive_loss(x_q, x_k)
            loss_21, logits_21, k1, _ = self.contrastive_loss(x_k, x_q)
            loss, logits, k = loss_12 + loss_21, torch.cat([logits_12, logits_21]), torch.cat([k1, k2])
        else:
            loss, logits, k, h = self.contrastive_loss(x_q, x_k)
        self.queue.enqueue(gather_keys(k))
        with torch.no_grad():
            logits = logits.detach() * self.T  # back to cosine similarities
            acc = (logits.argmax(dim=1) == 0).float().mean()
            pos_sim, neg_sim = logits[:, 0].mean(), logits[:, 1:].mean()
        return MoCoOutput(loss=loss, acc=acc, pos_sim=pos_sim, neg_sim=neg_sim, features=h)
