"""Learning-rate schedules as precomputed per-step arrays (as in DINO): easy to plot, test and resume.

One helper, `lr_schedule`, serves every loop in mocolab:

- pretraining: cosine decay to 0 (docs/protocols.md section 1). The official
  ImageNet code (`main_moco.py`) sets lr = base * 0.5 * (1 + cos(pi * e / E))
  once per epoch, counting epochs e from 0; that is `per_step=False` here.
  (The CIFAR-10 demo notebook counts its epochs from 1, so its lr in epoch e
  is ours in epoch e + 1: the same curve shifted by one epoch, reaching 0 in
  its last epoch. mocolab keeps the ImageNet recipe's 0-based count.)
- linear probes: a step schedule, lr x 0.1 at milestone epochs (60 and 80 of
  100 for the AvgPool protocol);
- fine-tuning: a step schedule with detectron2's linear warm-up (VOC, COCO)
  or MMSegmentation's poly schedule (segmentation), counted in iterations
  (steps_per_epoch = 1).

Warm-up, when asked for, multiplies the schedule by a factor that rises
linearly from `warmup_factor` at step 0 towards 1 at the end of the warm-up
(detectron2's WarmupMultiStepLR rule, factor 0.001); a cosine decay starts
after the warm-up.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

WARMUP_FACTOR = 0.001  # detectron2's default WARMUP_FACTOR: the lr starts at base / 1000


def lr_schedule(
    base_lr: float,
    epochs: int,
    steps_per_epoch: int = 1,
    *,
    shape: Literal["cosine", "step", "poly"] = "cosine",
    per_step: bool = True,
    milestones=(),
    gamma: float = 0.1,
    power: float = 0.9,
    min_lr: float = 0.0,
    warmup_epochs: float = 0,
    warmup_factor: float = WARMUP_FACTOR,
) -> np.ndarray:
    """The lr of every optimiser step: `epochs * steps_per_epoch` values.

    shape "cosine": min_lr + (base - min_lr) * 0.5 * (1 + cos(pi * t / T)), t and T counted after warm-up;
    "step": base * gamma ** (number of milestones <= t); "poly": (base - min_lr) * (1 - t / E) ** power + min_lr.
    t is the time in epochs: step / steps_per_epoch, or its floor with per_step=False (one lr per epoch).
    """
    if shape not in ("cosine", "step", "poly"):
        raise ValueError(f"unknown schedule shape {shape!r}; choose 'cosine', 'step' or 'poly'")
    step = np.arange(epochs * steps_per_epoch, dtype=np.float64)
    t = step / steps_per_epoch if per_step else np.floor(step / steps_per_epoch)  # time in epochs
    if shape == "cosine":
        decayed = np.clip(t - warmup_epochs, 0, None) / (epochs - warmup_epochs)
        lr = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + np.cos(np.pi * decayed))
    elif shape == "step":
        lr = base_lr * gamma ** (t[:, None] >= np.asarray(sorted(milestones), dtype=np.float64)[None, :]).sum(1)
    else:
        lr = (base_lr - min_lr) * (1.0 - t / epochs) ** power + min_lr
    if warmup_epochs:
        warm_steps = warmup_epochs * steps_per_epoch
        alpha = np.clip(step / warm_steps, 0.0, 1.0)  # the warm-up counts steps even with per_step=False
        lr = lr * (warmup_factor * (1.0 - alpha) + alpha)
    return lr
