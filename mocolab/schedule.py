"""Learning-rate schedules as precomputed per-step arrays (as in DINO): easy to plot and test."""
from __future__ import annotations

import math

import numpy as np


def cosine_schedule(base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0,
                    per_step: bool = True) -> np.ndarray:
    """lr for every optimiser step: optional linear warm-up, then cosine decay to 0.

    per_step=False holds the lr constant within an epoch, as the official MoCo
    code and its CIFAR demo do (lr = base * 0.5 * (1 + cos(pi * epoch / epochs))).
    """
    total = epochs * steps_per_epoch
    step = np.arange(total, dtype=np.float64)
    t = step / steps_per_epoch if per_step else np.floor(step / steps_per_epoch)  # time in epochs
    lr = base_lr * 0.5 * (1.0 + np.cos(math.pi * (t - warmup_epochs) / (epochs - warmup_epochs)))
    if warmup_epochs:
        # Warm-up ramps per step even with per_step=False: a jump to the full lr is what it avoids.
        warm = step < warmup_epochs * steps_per_epoch
        lr[warm] = base_lr * (step[warm] + 1) / (warmup_epochs * steps_per_epoch)
    return lr
