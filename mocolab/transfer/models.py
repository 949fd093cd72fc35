"""The reference transfer models, built from torchvision's detection and segmentation models.

- `faster_rcnn_c4`: Faster R-CNN R50-C4 as in the VOC row: the ResNet up to
  layer3 (stride 16, 1024 channels) feeds the RPN and a 14 x 14 RoIAlign; res5
  (layer4, with its BN) is the box head, then average pooling and the box
  predictor (detectron2's Res5ROIHeads).
- `faster_rcnn_fpn`, `mask_rcnn_fpn`: torchvision's R50-FPN models (the COCO row).
- `fcn_r50_d8`: FCN on a dilated ResNet-50 (layer3 and layer4 dilated, output
  stride 8) with the auxiliary head on layer3 (the VOC12 + aug row).

Every model takes `backbone` weights: a torchvision ResNet-50 state_dict (see
export.backbone_state), or None for a random initialisation. The backbone keeps
trainable BatchNorm layers (nothing frozen, as the protocol says); on several
GPUs job.py turns them into SyncBatchNorm.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.models.segmentation import fcn_resnet50
from torchvision.ops import MultiScaleRoIAlign

from ..run.checkpoint import CheckpointError, load_state
from .export import backbone_state

MIN_SIZES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)  # multi-scale training, short side


# The supervised row of the transfer benchmarks: torchvision's original weights (weights.registry), as in
# MoCo's detection/README.md and detectron2's R-50 baselines.
SUPERVISED = "torchvision_r50_v1"


def backbone_weights(source: str | None) -> dict | None:
    """A ResNet-50 state_dict from "supervised" (torchvision's ImageNet weights, downloaded once into the cache),
    a checkpoint (a mocolab run, a published checkpoint's name or a file of a known format), or
    None / "none" / "random" (random initialisation)."""
    if source in (None, "", "none", "random"):
        return None
    return backbone_state(SUPERVISED if source == "supervised" else source)


def load_backbone(module: nn.Module, weights: dict | None, name: str = "backbone") -> None:
    """Load ResNet weights into a torchvision ResNet body (an IntermediateLayerGetter or a ResNet without fc),
    naming the mismatching keys when they do not fit (another architecture, say)."""
    if weights is None:
        return
    try:
        load_state(module, weights, f"(the ResNet-50 {name} weights)")
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}; transfer needs a ResNet-50 with the ImageNet stem (arch='resnet50', cifar_stem=False)"
        ) from err


class Res5Head(nn.Module):
    """detectron2's Res5ROIHeads trunk: res5 on the 14 x 14 RoI features, then global average pooling."""

    def __init__(self, layer4: nn.Module):
        super().__init__()
        self.res5 = layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))  # R x 2048


def faster_rcnn_c4(
    num_classes: int = 21, backbone: dict | None = None, min_size=MIN_SIZES, max_size: int = 1333, **options
) -> FasterRCNN:
    """Faster R-CNN R50-C4 (num_classes counts the background); options go to torchvision's FasterRCNN
    (e.g. box_batch_size_per_image, 512 by default as in detectron2)."""
    resnet = torchvision.models.resnet50(weights=None, norm_layer=nn.BatchNorm2d)
    resnet.fc = nn.Identity()  # no parameters: the state_dict is the exported one exactly
    load_backbone(resnet, backbone)
    trunk = nn.Sequential(
        OrderedDict(
            [(n, getattr(resnet, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")]
        )
    )
    trunk.out_channels = 1024
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    return FasterRCNN(
        trunk,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0),
        box_head=Res5Head(resnet.layer4),
        box_predictor=FastRCNNPredictor(2048, num_classes),
        min_size=min_size,
        max_size=max_size,
        **options,
    )


def faster_rcnn_fpn(num_classes: int = 21, backbone: dict | None = None, min_size=MIN_SIZES, max_size=1333, **options):
    """torchvision's Faster R-CNN R50-FPN; without torchvision weights its BN is trainable and every
    stage is trained."""
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size, **options
    )
    load_backbone(model.backbone.body, backbone)
    return model


def mask_rcnn_fpn(
    num_classes: int = 81,
    backbone: dict | None = None,
    min_size=(640, 672, 704, 736, 768, 800),
    max_size=1333,
    **options,
):
    """torchvision's Mask R-CNN R50-FPN (COCO: 80 classes + background; multi-scale 640-800)."""
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size, **options
    )
    load_backbone(model.backbone.body, backbone)
    return model


def fcn_r50_d8(num_classes: int = 21, backbone: dict | None = None) -> nn.Module:
    """FCN on a ResNet-50 dilated to output stride 8, with the auxiliary FCN head on layer3."""
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)
    load_backbone(model.backbone, backbone)
    return model
