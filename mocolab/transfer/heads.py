"""The reference's heads and losses where torchvision's differ (docs/protocols.md section 3).

- `FCNHead`: MMSegmentation's FCN head (`mmseg/models/decode_heads/fcn_head.py`, as
  MMSelfSup 0.x's `fcn_r50-d8` config sets it): `num_convs` 3 x 3 conv-BN-ReLU
  layers, with concat_input the head's input concatenated to their output and
  fused by one more 3 x 3 conv-BN-ReLU, then Dropout2d(0.1) and a 1 x 1 conv to
  the classes. torchvision's `FCNHead` is one conv to a quarter of the channels.
- `use_reference_rpn_and_losses`: the RPN's and the RoI head's box regression
  losses as mmdet's `L1Loss` (loss_weight 1), which both MMSelfSup detection
  configs use; torchvision computes smooth L1 with beta 1/9. The normalisation is
  the same in both: the sum over positive samples divided by all sampled anchors
  (RPN) or RoIs (box head). And the RPN's matching: a box's best anchors are
  objects only at IoU 0.3 or more (`min_pos_iou`), and in the C4 config anchors
  that cross the image's border take no part in the targets (`allowed_border=0`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # BN follows: no bias, as mmcv's ConvModule
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FCNHead(nn.Module):
    """MMSegmentation's FCNHead: in_channels -> channels (num_convs convs) [-> concat with the input -> channels]
    -> Dropout2d(dropout) -> 1 x 1 conv to num_classes, at the input's resolution.

    Initialised as MMSegmentation does: the convs by Kaiming's normal rule (fan_out, ReLU; mmcv's ConvModule),
    BN to (1, 0), the classifier from N(0, 0.01) with zero bias (BaseDecodeHead's init_cfg)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(*[_conv_bn_relu(a, b) for a, b in zip(widths, widths[1:])])
        self.conv_cat = _conv_bn_relu(in_channels + channels, channels) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.conv_seg:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


def box_predictor(in_features: int, num_classes: int) -> FastRCNNPredictor:
    """torchvision's box predictor (class scores and per-class box deltas) initialised as mmdet's BBoxHead and
    detectron2's FastRCNNOutputLayers both do: scores from N(0, 0.01), deltas from N(0, 0.001), zero biases
    (torchvision keeps nn.Linear's default uniform draw)."""
    predictor = FastRCNNPredictor(in_features, num_classes)
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    return predictor


def max_iou_assign(anchors: torch.Tensor, boxes: torch.Tensor, positive: float, negative: float, min_pos_iou: float):
    """mmdet's MaxIoUAssigner as both reference RPNs set it (match_low_quality, gt_max_assign_all): each anchor's
    label (1 object, 0 background, -1 ignored) and the box it regresses to.

    An anchor whose best IoU over the boxes is >= positive is an object, < negative background, else ignored.
    Then each box, in order, takes the anchors of its highest IoU (ties included) as objects, but only when that
    IoU is >= min_pos_iou; torchvision's Matcher does so at any IoU, so a box smaller than every anchor gets an
    anchor it barely overlaps."""
    labels = torch.full((len(anchors),), -1.0, device=anchors.device)
    if len(boxes) == 0:
        return labels.fill_(0.0), torch.zeros_like(anchors)
    iou = box_iou(boxes, anchors)  # boxes x anchors
    best, match = iou.max(dim=0)
    labels[best < negative] = 0.0
    labels[best >= positive] = 1.0
    for g, top in enumerate(iou.max(dim=1).values.tolist()):
        if top >= min_pos_iou:
            ties = iou[g] == top
            labels[ties], match[ties] = 1.0, g
    return labels, boxes[match]


class ReferenceRPN(RegionProposalNetwork):
    """torchvision's RPN with mmdet's settings where they differ (instance attributes, set by
    `use_reference_rpn_and_losses`):

    - l1_loss: the box loss is the sum of |deltas - targets| over the sampled positive anchors, divided by the
      number of sampled anchors (positive and negative); objectness is binary cross-entropy over the sampled
      anchors, as in torchvision.
    - min_pos_iou: None matches anchors as torchvision does; a number, as mmdet's assigner (`max_iou_assign`):
      a box's best anchors are objects only at that IoU or more (0.3 in both reference configs).
    - allowed_border: None uses every anchor (torchvision, detectron2's default); b >= 0 leaves anchors that
      reach more than b pixels past the resized image's border out of the targets (label -1, ignored), and out
      of the matching, so a ground-truth box's best anchor is its best anchor inside the image (mmdet's
      anchor_inside_flags; the C4 config's allowed_border=0)."""

    l1_loss = False
    min_pos_iou: float | None = None
    allowed_border: int | None = None

    def forward(self, images, features, targets=None):
        self._image_sizes = images.image_sizes  # (H, W) of each resized image: the border the anchors meet
        try:
            return super().forward(images, features, targets)
        finally:
            del self._image_sizes

    def assign_targets_to_anchors(self, anchors, targets):
        if self.allowed_border is None and self.min_pos_iou is None:
            return super().assign_targets_to_anchors(anchors, targets)
        labels, matched = [], []
        for a, target, (h, w) in zip(anchors, targets, self._image_sizes):
            if self.allowed_border is None:  # every anchor: no cut, no scatter back
                a_labels, a_matched = self._assign(a, target)
            else:
                b = self.allowed_border
                inside = (a[:, 0] >= -b) & (a[:, 1] >= -b) & (a[:, 2] < w + b) & (a[:, 3] < h + b)
                inside_labels, inside_matched = self._assign(a[inside], target)
                index = (inside.nonzero()[:, 0],)
                a_labels = torch.full((len(a),), -1.0, device=a.device).index_put(index, inside_labels)
                a_matched = torch.zeros_like(a).index_put(index, inside_matched)
            labels.append(a_labels)
            matched.append(a_matched)
        return labels, matched

    def _assign(self, anchors: torch.Tensor, target: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, matched boxes) of one image's anchors: mmdet's assigner with min_pos_iou, else torchvision's."""
        if self.min_pos_iou is None:
            (labels,), (matched,) = super().assign_targets_to_anchors([anchors], [target])
            return labels, matched
        m = self.proposal_matcher
        return max_iou_assign(anchors, target["boxes"], m.high_threshold, m.low_threshold, self.min_pos_iou)

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        if not self.l1_loss:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        deltas = pred_bbox_deltas[positive]
        box_loss = F.l1_loss(deltas, regression_targets[positive], reduction="sum") / sampled.numel()
        return objectness_loss, box_loss


def roi_l1_loss(box_regression: torch.Tensor, labels: list, regression_targets: list) -> torch.Tensor:
    """mmdet's L1 box loss of the RoI head: for each sampled RoI of an object class, |deltas - targets| of its
    class's four deltas, summed, over the number of sampled RoIs (background ones included)."""
    labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
    positive = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(labels), -1, 4)[positive, labels[positive]]
    return F.l1_loss(deltas, regression_targets[positive], reduction="sum") / labels.numel()


class L1RoIHeads(RoIHeads):
    """torchvision's RoI heads (box and mask branches unchanged) with `roi_l1_loss` as loss_box_reg.

    The box loss needs the step's sampled RoI labels and targets and the predictor's regression, which
    torchvision's forward keeps to itself: they are read on the way (select_training_samples, a forward hook on
    the predictor) and the loss replaced after it, so the mask branch runs as torchvision wrote it."""

    def select_training_samples(self, proposals, targets):
        sampled = super().select_training_samples(proposals, targets)
        self._sampled = sampled[2], sampled[3]  # labels, regression targets
        return sampled

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        regression = []
        hook = self.box_predictor.register_forward_hook(lambda module, args, out: regression.append(out[1]))
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            hook.remove()
        labels, regression_targets = self.__dict__.pop("_sampled")
        losses["loss_box_reg"] = roi_l1_loss(regression[0], labels, regression_targets)
        return result, losses


def use_reference_rpn_and_losses(
    model, l1_loss: bool = True, min_pos_iou: float | None = 0.3, allowed_border: int | None = None
):
    """The detector with mmdet's settings where torchvision's differ: L1 box losses in its RPN and RoI heads
    (l1_loss), the RPN's matching (min_pos_iou) and border rule (allowed_border; see ReferenceRPN). The subclasses
    keep every module, parameter and setting (only the losses and the anchors' targets differ), so only their
    class changes."""
    if l1_loss or min_pos_iou is not None or allowed_border is not None:
        model.rpn.__class__ = ReferenceRPN
        model.rpn.l1_loss, model.rpn.min_pos_iou, model.rpn.allowed_border = l1_loss, min_pos_iou, allowed_border
    if l1_loss:
        model.roi_heads.__class__ = L1RoIHeads
    return model
