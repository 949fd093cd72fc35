"""The online linear probe: a second reading of "the representation improved", beside the kNN monitor.

A linear classifier on the pooled backbone features of each training step's query view, trained on
the labels alongside MoCo (`Config.online_probe`), as solo-learn's and lightly's online classifiers
are. Its features are detached: it learns from the representation and never changes it (a run with
the probe trains the same MoCo weights, bit for bit, as one without; tests/test_online_probe.py). It is
read where the kNN monitor is: top-1 on the monitor's test images (centre views), metrics.csv's
`probe_top1`.

It is a monitor, not the protocol's linear evaluation (evaluate.linear: 100 epochs on frozen
features of un-augmented images): it trains on augmented views, on features that move under it, for
one pass per epoch, so it reads lower and lags. What it adds to kNN is the other half of the
question: kNN asks whether neighbours share a label, the probe whether a linear boundary separates
the classes.

The head: BatchNorm without affine parameters, then a Linear layer (MAE's linear probe, He et al.
2021, appendix A.2): standardising the features makes one learning rate work for every architecture
and width, whose raw pooled features differ in scale by orders of magnitude (an unnormalised head at
lr 0.1 diverged on ResNet-18's). Optimisation: SGD with momentum 0.9, no weight decay, lr PROBE_LR
scaled by the run's own schedule (cosine to 0). The Linear layer starts at zero and is built without
its random initialisation, so that building the probe draws nothing from the random streams of the
run's augmentations. In a run of several processes it lives in rank 0 and learns from rank 0's share
of each batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROBE_LR = 0.1  # solo-learn's default classifier lr for its CIFAR recipes


class OnlineProbe:
    """A linear head (in_dim -> num_classes) on standardised features, and its SGD; stepped once per training step."""

    def __init__(self, in_dim: int, num_classes: int, device, lr: float = PROBE_LR):
        # skip_init: nn.Linear's own initialisation draws from torch's generator, which would shift every later
        # augmentation and so change the MoCo run; zeros need no draw.
        linear = nn.utils.skip_init(nn.Linear, in_dim, num_classes, device=device)
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(nn.BatchNorm1d(in_dim, affine=False, device=device), linear)
        self.lr = lr
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)

    def step(self, features: torch.Tensor, labels: torch.Tensor, lr_scale: float = 1.0) -> torch.Tensor:
        """One SGD step on a batch of detached features; returns (loss, accuracy) as one tensor (no host sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * lr_scale
        self.head.train()
        with torch.autocast(features.device.type, enabled=False):  # a 10-way head: fp32 costs nothing
            logits = self.head(features.detach().float())
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([loss.detach(), (logits.argmax(1) == labels).float().mean()])

    @torch.no_grad()
    def top1(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy (%) on held-out features (the kNN monitor's test images)."""
        self.head.eval()  # the BN's running statistics of the training features
        return 100.0 * (self.head(features.float()).argmax(1) == labels).float().mean().item()

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so that a resumed run's probe continues where it stopped."""
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
