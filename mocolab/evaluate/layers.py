"""Layer features feat1..feat5: each ResNet stage average-pooled to about 9k dimensions.

docs/protocols.md section 2, "Layer features": for ResNet-50 at 224 px the pooling
is the benchmark's fixed table below. For other backbones and input sizes
(ResNet-18 on 32 px CIFAR, say) an analogous pooling is derived: each stage is
average-pooled to the square grid that brings it closest to 9,216 dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models import STAGES, stage_outputs

LAYERS = ("feat1", "feat2", "feat3", "feat4", "feat5")
STAGE_OF = dict(zip(LAYERS, STAGES))  # feat1: stem (before max-pool), feat2: layer1, ...

# (channels, map size) -> AvgPool2d(kernel, stride, padding), from the benchmark for ResNet-50 at 224.
REFERENCE_POOLS = {
    (64, 112): (10, 10, 4),  # feat1: 64 x 12 x 12 = 9216
    (256, 56): (16, 8, 0),  # feat2: 256 x 6 x 6 = 9216
    (512, 28): (13, 5, 0),  # feat3: 512 x 4 x 4 = 8192
    (1024, 14): (8, 3, 0),  # feat4: 1024 x 3 x 3 = 9216
    (2048, 7): (6, 1, 0),  # feat5: 2048 x 2 x 2 = 8192
}
TARGET_DIM = 9216


def layer_pool(channels: int, size: int) -> nn.Module:
    """The pooling of one stage map (channels x size x size) for its feat layer.

    The reference table where it applies (padding counts toward the average, as
    in AvgPool2d's default); otherwise adaptive average pooling to an s x s grid
    with s = round(sqrt(9216 / channels)), at most the map size.
    """
    if (channels, size) in REFERENCE_POOLS:
        kernel, stride, padding = REFERENCE_POOLS[(channels, size)]
        return nn.AvgPool2d(kernel, stride, padding)
    grid = max(1, min(size, round(math.sqrt(TARGET_DIM / channels))))
    return nn.AdaptiveAvgPool2d(grid)


@torch.no_grad()
def layer_features(backbone: nn.Module, x: torch.Tensor, layers=LAYERS) -> dict[str, torch.Tensor]:
    """Flattened pooled features for each requested feat layer, and "avgpool" (global pool of layer4)."""
    maps = stage_outputs(backbone, x)
    out = {}
    for name in layers:
        if name == "avgpool":
            out[name] = F.adaptive_avg_pool2d(maps["layer4"], 1).flatten(1)
            continue
        if name not in STAGE_OF:
            raise ValueError(f"unknown layer {name!r}; choose from {list(LAYERS) + ['avgpool']}")
        fmap = maps[STAGE_OF[name]]
        out[name] = layer_pool(fmap.shape[1], fmap.shape[-1])(fmap).flatten(1)
    return out
