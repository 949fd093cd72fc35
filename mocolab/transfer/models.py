"""The reference transfer models, built from torchvision's detection and segmentation parts.

Each is the model of MMSelfSup 0.x's benchmark config for its row (the files are
named in docs/protocols.md section 3), with no mmdet / mmseg dependency:

- `faster_rcnn_c4`: Faster R-CNN R50-C4 as in the VOC row: the ResNet up to
  layer3 (stride 16, 1024 channels) feeds the RPN and a 14 x 14 RoIAlign; res5
  (layer4, with its BN) then one more BatchNorm on its output is the box head
  (MMSelfSup's `ResLayerExtraNorm`, MoCo's `Res5ROIHeadsExtraNorm`), then average
  pooling and the box predictor. The RPN keeps 12,000 / 2,000 proposals before /
  after NMS in training, 6,000 / 1,000 in testing, matches anchors as mmdet (a
  box's best anchor counts at IoU 0.3 or more) and leaves anchors that cross the
  image's border out of its targets; both box losses are L1.
- `mask_rcnn_fpn`: Mask R-CNN R50-FPN as in the COCO row: BatchNorm in the FPN,
  a 4-conv-1-fc box head and the 4-conv mask head with BatchNorm (mmdet's
  `Shared4Conv1FCBBoxHead` and `FCNMaskHead` with `norm_cfg`), 1,000 proposals
  after NMS in training, mmdet's RPN matching, L1 box losses.
- `faster_rcnn_fpn`: torchvision's Faster R-CNN R50-FPN as it is (no reference row).
- `fcn_r50_d8`: FCN on a dilated ResNet-50 (layer3 and layer4 dilated, output
  stride 8): MMSegmentation's FCN head (two 3 x 3 convs, the input concatenated
  back, dropout 0.1) and the auxiliary head on layer3 (the VOC12 + aug row).

Every model takes `backbone` weights: a torchvision ResNet state_dict (see
export.backbone_state), or None for a random initialisation. The backbone keeps
trainable BatchNorm layers (nothing frozen, as the protocol says); on several
GPUs job.py turns them into SyncBatchNorm.

The reference's backbone is ResNet-50 with the ImageNet stem. Any ResNet that
mocolab builds also fits (`arch`, read off the weights' shapes), so that a
notebook can fine-tune the CIFAR-10 teaching checkpoint (resnet10_w16 with the
CIFAR stem) in a minute on a CPU: the same heads on the stage widths of that
network. Its numbers say nothing about the reference rows.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.models.segmentation import FCN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..models import resnet
from ..run.checkpoint import CheckpointError, load_state
from ..weights.formats import infer_arch
from .export import backbone_state
from .heads import FCNHead, box_predictor, use_reference_rpn_and_losses

MIN_SIZES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)  # multi-scale training, short side


# The supervised row of the transfer benchmarks: torchvision's original weights (weights.registry), as in
# MoCo's detection/README.md and detectron2's R-50 baselines.
SUPERVISED = "torchvision_r50_v1"
REFERENCE_ARCH = ("resnet50", False)  # (arch, cifar_stem) of every reference row's backbone


def backbone_weights(source: str | None) -> dict | None:
    """A ResNet-50 state_dict from "supervised" (torchvision's ImageNet weights, downloaded once into the cache),
    a checkpoint (a mocolab run, a published checkpoint's name or a file of a known format), or
    None / "none" / "random" (random initialisation)."""
    if source in (None, "", "none", "random"):
        return None
    return backbone_state(SUPERVISED if source == "supervised" else source, allow_cifar_stem=True)


def backbone_arch(weights: dict | None) -> tuple[str, bool]:
    """(arch, cifar_stem) of backbone weights, read off their shapes; the reference's for None (random)."""
    return REFERENCE_ARCH if weights is None else infer_arch(weights, "the backbone weights")


def load_backbone(module: nn.Module, weights: dict | None, name: str = "backbone") -> None:
    """Load ResNet weights into a torchvision ResNet body (an IntermediateLayerGetter or a ResNet without fc),
    naming the mismatching keys when they do not fit."""
    if weights is not None:
        load_state(module, weights, f"(the ResNet {name} weights)")


def resnet_body(weights: dict | None, arch: tuple[str, bool] | None = None, dilated: bool = False) -> nn.Module:
    """The ResNet (fc removed) of `arch` (default: the weights'), with the weights loaded. dilated: layer3 and
    layer4 dilated instead of strided (output stride 8, torchvision's segmentation backbones; bottleneck blocks
    only, as in torchvision)."""
    name, cifar_stem = arch or backbone_arch(weights)
    if dilated:
        net = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=[False, True, True])
        net.fc = nn.Identity()
    else:
        net = resnet(name, cifar_stem=cifar_stem)
    load_backbone(net, weights)
    return net


def stage_channels(net: nn.Module) -> list[int]:
    """Output channels of layer1..layer4: the last BN of each stage normalises its output."""
    return [
        [m for m in getattr(net, f"layer{i}").modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        for i in (1, 2, 3, 4)
    ]


# The RPN's proposals kept before / after NMS (mmdet's nms_pre / max_per_img) in MMSelfSup 0.x's C4 model
# (configs/benchmarks/mmdetection/_base_/models/faster_rcnn_r50_c4.py): torchvision's defaults are 2000 / 2000 in
# training and 1000 / 1000 in testing.
C4_PROPOSALS = {
    "rpn_pre_nms_top_n_train": 12_000,
    "rpn_post_nms_top_n_train": 2_000,
    "rpn_pre_nms_top_n_test": 6_000,
    "rpn_post_nms_top_n_test": 1_000,
}
# The FPN model's (_base_/models/mask_rcnn_r50_fpn.py): 2000 per level before NMS, 1000 after it in training
# (torchvision: 2000), 1000 / 1000 in testing, as torchvision's.
FPN_PROPOSALS = {
    "rpn_pre_nms_top_n_train": 2_000,
    "rpn_post_nms_top_n_train": 1_000,
    "rpn_pre_nms_top_n_test": 1_000,
    "rpn_post_nms_top_n_test": 1_000,
}


class Res5Head(nn.Module):
    """The C4 box head: res5 on the 14 x 14 RoI features, one more BatchNorm on its output, then global average
    pooling. The extra norm is MMSelfSup 0.x's `ResLayerExtraNorm` (MoCo's detectron2 config has the same,
    `Res5ROIHeadsExtraNorm`): features from unsupervised pre-training are distributed differently from supervised
    ones, so the layers after the backbone are normalised too (MoCo v1, He et al. 2019, section 4.2, "feature
    normalization"). extra_norm=False is detectron2's plain Res5ROIHeads."""

    def __init__(self, layer4: nn.Module, channels: int, extra_norm: bool = True):
        super().__init__()
        self.res5 = layer4
        self.norm = nn.BatchNorm2d(channels) if extra_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.res5(x)).mean(dim=(2, 3))  # R x 2048


def faster_rcnn_c4(
    num_classes: int = 21,
    backbone: dict | None = None,
    min_size=MIN_SIZES,
    max_size: int = 1333,
    arch: tuple[str, bool] | None = None,
    extra_norm: bool = True,
    l1_loss: bool = True,
    min_pos_iou: float | None = 0.3,
    allowed_border: int | None = 0,
    **options,
) -> FasterRCNN:
    """Faster R-CNN R50-C4 (num_classes counts the background) as MMSelfSup's VOC config builds it; options go to
    torchvision's FasterRCNN and override C4_PROPOSALS (e.g. box_batch_size_per_image, 512 by default as in the
    reference). arch: (name, cifar_stem) of the ResNet when there are no weights to read it from (a resumed run);
    default the weights', else ResNet-50. extra_norm=False, l1_loss=False, min_pos_iou=None, allowed_border=None:
    detectron2's Res5ROIHeads, torchvision's smooth L1 (beta 1/9) box losses, its RPN matching (a box's best anchor
    is an object at any IoU) and RPN targets on every anchor, instead of the reference's (heads.ReferenceRPN)."""
    net = resnet_body(backbone, arch)  # fc is Identity: no parameters, the state_dict is the exported one exactly
    trunk = nn.Sequential(
        OrderedDict([(n, getattr(net, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")])
    )
    channels = stage_channels(net)
    trunk.out_channels = channels[2]  # 1024 for ResNet-50
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    model = FasterRCNN(
        trunk,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0),
        box_head=Res5Head(net.layer4, channels[3], extra_norm),
        box_predictor=box_predictor(channels[3], num_classes),  # 2048 for ResNet-50
        min_size=min_size,
        max_size=max_size,
        **{**C4_PROPOSALS, **options},
    )
    return use_reference_rpn_and_losses(model, l1_loss, min_pos_iou, allowed_border)


def _fpn(backbone: dict | None, arch, norm_layer=None) -> BackboneWithFPN:
    """The ResNet with torchvision's FPN on layer1-4 (256 channels, a max-pooled extra level), every stage
    trained: what torchvision's *_resnet50_fpn builders make without pretrained weights, for any ResNet.
    norm_layer: a norm after each lateral and output conv of the FPN (mmdet's FPN with norm_cfg)."""
    net = resnet_body(backbone, arch)
    return BackboneWithFPN(
        net,
        return_layers={f"layer{i}": str(i - 1) for i in (1, 2, 3, 4)},
        in_channels_list=stage_channels(net),
        out_channels=256,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm_layer,
    )


def faster_rcnn_fpn(
    num_classes: int = 21, backbone: dict | None = None, min_size=MIN_SIZES, max_size=1333, arch=None, **options
):
    """torchvision's Faster R-CNN R50-FPN; without torchvision weights its BN is trainable and every
    stage is trained."""
    return FasterRCNN(_fpn(backbone, arch), num_classes, min_size=min_size, max_size=max_size, **options)


def mask_rcnn_fpn(
    num_classes: int = 81,
    backbone: dict | None = None,
    min_size=(640, 672, 704, 736, 768, 800),
    max_size=1333,
    arch=None,
    norm: bool = True,
    l1_loss: bool = True,
    min_pos_iou: float | None = 0.3,
    allowed_border: int | None = None,
    **options,
):
    """Mask R-CNN R50-FPN as MMSelfSup's COCO config builds it (80 classes + background; multi-scale 640-800):
    BatchNorm in the FPN, the box head of 4 convs (3 x 3, 256) and one fc (1024), the mask head of 4 convs, each
    conv followed by BatchNorm and ReLU; the RPN head of one conv and FPN_PROPOSALS; L1 box losses. options go to
    torchvision's MaskRCNN and override FPN_PROPOSALS. norm=False: torchvision's maskrcnn_resnet50_fpn heads (a
    two-fc box head, no norm outside the backbone); l1_loss=False: its smooth L1 (beta 1/9) box losses;
    min_pos_iou=None: its RPN matching (heads.ReferenceRPN). allowed_border: None, every anchor in the RPN's
    targets, as the reference's FPN config (allowed_border=-1)."""
    options = {**FPN_PROPOSALS, **options}
    if not norm:
        model = MaskRCNN(_fpn(backbone, arch), num_classes, min_size=min_size, max_size=max_size, **options)
        return use_reference_rpn_and_losses(model, l1_loss, min_pos_iou, allowed_border)
    fpn = _fpn(backbone, arch, nn.BatchNorm2d)
    box_head = FastRCNNConvFCHead((fpn.out_channels, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)
    nn.init.xavier_uniform_(box_head[5].weight)  # mmdet's ConvFCBBoxHead draws its shared fc so
    nn.init.zeros_(box_head[5].bias)
    model = MaskRCNN(
        fpn,
        None,  # the predictors below carry the classes
        min_size=min_size,
        max_size=max_size,
        box_head=box_head,
        box_predictor=box_predictor(1024, num_classes),
        mask_head=MaskRCNNHeads(fpn.out_channels, [256] * 4, 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(256, 256, num_classes),  # 2x deconv, ReLU, 1 x 1 conv: mmdet's too
        **options,
    )
    return use_reference_rpn_and_losses(model, l1_loss, min_pos_iou, allowed_border)


def fcn_r50_d8(num_classes: int = 21, backbone: dict | None = None, arch=None) -> nn.Module:
    """FCN R50-D8 as MMSelfSup's VOC12 + aug config builds it: a ResNet-50 dilated to output stride 8 (layer3
    and layer4 dilated 2 and 4, their first blocks 1 and 2, as MMSegmentation's contract_dilation and
    torchvision's replace_stride_with_dilation both do), MMSegmentation's FCN head on layer4 (heads.FCNHead: two
    convs of 512, the input concatenated back) and its auxiliary head on layer3 (one conv of 256), each with
    dropout 0.1; torchvision's FCN upsamples both to the input's size. A ResNet with the CIFAR stem has output
    stride 8 undilated (no stride in its stem) and is used as it is; a ResNet of basic blocks with the ImageNet
    stem cannot be dilated (torchvision's BasicBlock)."""
    name, cifar_stem = arch or backbone_arch(backbone)
    bottleneck = name in ("resnet50",)
    if not (cifar_stem or bottleneck):
        raise CheckpointError(
            f"segmentation needs output stride 8: a {name} with the ImageNet stem would need dilated basic "
            f"blocks, which torchvision does not build; use a ResNet-50 or a network with the CIFAR stem"
        )
    net = resnet_body(backbone, (name, cifar_stem), dilated=not cifar_stem)
    channels = stage_channels(net)
    body = IntermediateLayerGetter(net, return_layers={"layer4": "out", "layer3": "aux"})
    # MMSegmentation's fcn_r50-d8: 512 channels in the main head, 256 in the auxiliary one (a quarter of the
    # input's, as torchvision's), scaled with the stage widths for a narrower ResNet.
    main = FCNHead(channels[3], channels[3] // 4, num_classes, num_convs=2, concat_input=True)
    aux = FCNHead(channels[2], channels[2] // 4, num_classes, num_convs=1, concat_input=False)
    return FCN(body, main, aux)
