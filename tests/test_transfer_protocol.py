"""The transfer rows against the reference's settings (MMSelfSup 0.x's benchmark configs, docs/protocols.md section 3):
each model's heads counted layer by layer, the proposal numbers, the L1 box losses against a hand computation, the
schedules' iterations and steps, and the segmentation pipeline's scales, crops and colour changes against
independent computations."""

import colorsys

import numpy as np
import pytest
import torch
from torch import nn

from mocolab.transfer import finetune, seg_transforms
from mocolab.transfer.heads import L1RoIHeads, ReferenceRPN, roi_l1_loss
from mocolab.transfer.models import faster_rcnn_c4, fcn_r50_d8, mask_rcnn_fpn


def count(module: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------


def test_the_c4_detector_is_the_references():
    """configs/benchmarks/mmdetection/voc0712/faster_rcnn_r50_c4_mstrain_24k_voc0712.py and its base model: res5
    and one more BatchNorm as the box head (ResLayerExtraNorm), 12,000 / 2,000 proposals in training, 6,000 /
    1,000 in testing, L1 box losses; an RPN head of one 3 x 3 conv of 1024 channels."""
    model = faster_rcnn_c4(21)
    head = model.roi_heads.box_head
    res5_norms = count(head.res5, nn.BatchNorm2d)
    assert res5_norms == 3 * 3 + 1  # three bottlenecks of three BN each, and the shortcut's
    assert count(head, nn.BatchNorm2d) == res5_norms + 1 and head.norm.num_features == 2048
    assert model.rpn._pre_nms_top_n == {"training": 12_000, "testing": 6_000}
    assert model.rpn._post_nms_top_n == {"training": 2_000, "testing": 1_000}
    assert model.rpn.head.conv[0][0].out_channels == 1024 and count(model.rpn.head, nn.Conv2d) == 3
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert isinstance(model.rpn, ReferenceRPN) and isinstance(model.roi_heads, L1RoIHeads)
    assert model.rpn.l1_loss and model.rpn.allowed_border == 0 and model.rpn.min_pos_iou == 0.3
    # The tiny preset's images (96-160 px) leave few of the 32-512 px anchors inside: it uses every anchor.
    assert faster_rcnn_c4(21, **finetune.TINY_MODEL_OPTIONS).rpn.allowed_border is None
    plain = faster_rcnn_c4(21, extra_norm=False, l1_loss=False, min_pos_iou=None, allowed_border=None)
    assert count(plain.roi_heads.box_head, nn.BatchNorm2d) == res5_norms
    assert type(plain.rpn).__name__ == "RegionProposalNetwork"
    # The extra norm normalises res5's output over the RoIs: its output has zero mean per channel in training.
    x = torch.randn(6, 1024, 14, 14)
    head.train()
    pooled_before_norm = head.norm(head.res5(x))
    assert pooled_before_norm.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_the_mask_rcnn_is_the_references():
    """configs/benchmarks/mmdetection/coco/mask_rcnn_r50_fpn_mstrain_1x_coco.py: norm in the FPN (each lateral and
    output conv), a Shared4Conv1FC box head and a 4-conv mask head with norm, one-conv RPN head, 1,000 proposals
    after NMS in training."""
    model = mask_rcnn_fpn(81)
    fpn = model.backbone.fpn
    assert count(fpn, nn.BatchNorm2d) == 8 and count(fpn, nn.Conv2d) == 8 and count(fpn, nn.ReLU) == 0
    box = model.roi_heads.box_head
    convs = [m for m in box.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in box.modules() if isinstance(m, nn.Linear)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 4 and count(box, nn.BatchNorm2d) == 4
    assert [(f.in_features, f.out_features) for f in fcs] == [(256 * 7 * 7, 1024)]
    mask = model.roi_heads.mask_head
    assert count(mask, nn.Conv2d) == 4 and count(mask, nn.BatchNorm2d) == 4
    assert count(model.roi_heads.mask_predictor, nn.ConvTranspose2d) == 1
    assert count(model.rpn.head.conv, nn.Conv2d) == 1
    assert model.rpn._pre_nms_top_n == {"training": 2_000, "testing": 1_000}
    assert model.rpn._post_nms_top_n == {"training": 1_000, "testing": 1_000}
    assert model.rpn.min_pos_iou == 0.3 and model.rpn.allowed_border is None  # allowed_border=-1: every anchor
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14) and model.roi_heads.box_roi_pool.output_size == (7, 7)
    predictor = model.roi_heads.box_predictor  # mmdet's and detectron2's draws: N(0, 0.01) and N(0, 0.001)
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_the_fcn_heads_are_mmsegmentations():
    """configs/benchmarks/mmsegmentation/_base_/models/fcn_r50-d8.py: the main head on layer4 with two 3 x 3 convs
    of 512, the input concatenated back and fused by a third, dropout 0.1; the auxiliary head on layer3 with one
    conv of 256; every conv followed by BN and ReLU; the classifier drawn from N(0, 0.01)."""
    model = fcn_r50_d8(21)
    main, aux = model.classifier, model.aux_classifier
    convs = [m for m in main.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (2048, 512, (3, 3)),
        (512, 512, (3, 3)),
        (2048 + 512, 512, (3, 3)),
        (512, 21, (1, 1)),
    ]
    assert count(main, nn.BatchNorm2d) == 3 and count(main, nn.ReLU) == 3 and main.dropout.p == 0.1
    convs = [m for m in aux.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1024, 256), (256, 21)]
    assert count(aux, nn.BatchNorm2d) == 1 and aux.dropout.p == 0.1
    assert main.conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.05) and not main.conv_seg.bias.any()
    # The concatenation puts the input first: cutting the fusing conv's weights on the first 2048 channels (the
    # input's own path) changes the output, cutting them on a channel range the input does not reach would not.
    main.eval()
    x = torch.randn(1, 2048, 8, 8)
    with torch.no_grad():
        before = main(x)
        main.conv_cat[0].weight[:, :2048] = 0
        assert not torch.allclose(main(x), before)
    out = model.eval()(torch.rand(1, 3, 64, 80))
    assert out["out"].shape == out["aux"].shape == (1, 21, 64, 80)


# ----------------------------------------------------------------------------
# L1 box losses
# ----------------------------------------------------------------------------


def test_the_rpn_box_loss_is_l1_over_the_sampled_anchors():
    """Four anchors labelled positive, negative, positive, ignored: all are sampled (256 per image), so the loss is
    the summed absolute error of the two positives over the three sampled anchors; objectness is BCE over those."""
    rpn = faster_rcnn_c4(21).rpn
    objectness = torch.tensor([[0.3], [-1.0], [2.0], [0.5]])
    deltas = torch.tensor([[0.1, -0.2, 0.3, 0.0], [5.0, 5, 5, 5], [-0.5, 0.25, 0.0, 1.0], [9.0, 9, 9, 9]])
    targets = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0, 0, 0], [0.0, 0.0, 0.0, 0.0], [0.0, 0, 0, 0]])
    labels = torch.tensor([1.0, 0.0, 1.0, -1.0])
    obj_loss, box_loss = rpn.compute_loss(objectness, deltas, [labels], [targets])
    l1 = (0.1 + 0.2 + 0.2 + 0.5) + (0.5 + 0.25 + 0.0 + 1.0)
    assert box_loss.item() == pytest.approx(l1 / 3)
    p = torch.sigmoid(torch.tensor([0.3, -1.0, 2.0]))
    bce = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(p[2])) / 3
    assert obj_loss.item() == pytest.approx(bce.item(), rel=1e-6)


def test_the_c4_rpn_leaves_anchors_across_the_border_out_of_its_targets():
    """allowed_border=0 (mmdet's C4 config): in a 100 x 100 image an anchor reaching past the border is ignored
    (label -1), and it is not in the matching either. The box's best anchor crosses the border; its best anchor
    inside the image (IoU 0.56, between the 0.3 and 0.7 thresholds) then becomes its low-quality positive. With
    every anchor (torchvision) the crossing one is the positive and the inside one is left between thresholds."""
    from torchvision.ops import box_iou

    rpn = faster_rcnn_c4(21).rpn
    gt = {"boxes": torch.tensor([[60.0, 20.0, 100.0, 60.0]]), "labels": torch.tensor([1])}
    anchors = torch.tensor([[64.0, 20.0, 104.0, 60.0], [60.0, 20.0, 99.0, 90.0], [0.0, 0.0, 30.0, 30.0]])
    iou = box_iou(anchors, gt["boxes"])[:, 0]
    assert iou[0] > 0.7 and 0.3 < iou[1] < 0.7 and iou[2] == 0  # 0.82 across the border, 0.56 inside, 0
    rpn._image_sizes = [(100, 100)]
    labels, matched = rpn.assign_targets_to_anchors([anchors], [gt])
    assert labels[0].tolist() == [-1.0, 1.0, 0.0] and torch.equal(matched[0][1], gt["boxes"][0])
    rpn.allowed_border = None
    labels, _ = rpn.assign_targets_to_anchors([anchors], [gt])
    assert labels[0].tolist() == [1.0, -1.0, 0.0]


def test_the_rpn_matches_anchors_as_mmdet():
    """mmdet's assigner (max_iou_assign) against torchvision's Matcher: with min_pos_iou = 0 they label every anchor
    alike on random boxes; with the references' 0.3, a box smaller than every anchor (best IoU 0.11) no longer
    makes its best anchor an object: it stays background, where torchvision makes it positive."""
    from mocolab.transfer.heads import max_iou_assign

    rpn = faster_rcnn_c4(21, min_pos_iou=None, allowed_border=None).rpn
    m = rpn.proposal_matcher
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        xy = torch.rand(300, 2, generator=generator) * 200
        anchors = torch.cat([xy, xy + 16 + torch.rand(300, 2, generator=generator) * 100], 1)
        xy = torch.rand(4, 2, generator=generator) * 200
        boxes = torch.cat([xy, xy + 8 + torch.rand(4, 2, generator=generator) * 80], 1)
        (expected,), _ = rpn.assign_targets_to_anchors([anchors], [{"boxes": boxes}])
        labels, matched = max_iou_assign(anchors, boxes, m.high_threshold, m.low_threshold, 0.0)
        assert torch.equal(labels, expected)
        positive = labels == 1
        assert (box_iou_rows(anchors[positive], matched[positive]) > 0).all()
    anchors = torch.tensor([[0.0, 0.0, 32.0, 32.0], [40.0, 40.0, 72.0, 72.0]])
    small = torch.tensor([[2.0, 2.0, 13.0, 13.0]])  # IoU 121 / 1024 = 0.118 with the first anchor
    (torchvisions,), _ = rpn.assign_targets_to_anchors([anchors], [{"boxes": small}])
    labels, _ = max_iou_assign(anchors, small, 0.7, 0.3, 0.3)
    assert torchvisions.tolist() == [1.0, 0.0] and labels.tolist() == [0.0, 0.0]


def box_iou_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i], from the definition."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_the_roi_box_loss_is_l1_of_the_true_class_deltas():
    regression = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 12) / 10  # 2 RoIs, 3 classes
    labels = [torch.tensor([2, 0])]  # one RoI of class 2, one background
    targets = [torch.tensor([[1.0, 1.0, 1.0, 1.0], [7.0, 7, 7, 7]])]
    expected = sum(abs(regression[0, 8 + j].item() - 1.0) for j in range(4)) / 2  # over both sampled RoIs
    assert roi_l1_loss(regression, labels, targets).item() == pytest.approx(expected)


def test_a_training_step_of_the_detector_uses_the_l1_loss_on_its_own_samples():
    """The RoI heads' loss_box_reg in a real forward equals roi_l1_loss of the predictor's output on the RoIs the
    step sampled, read independently here, and the mask branch's loss is still there."""
    torch.manual_seed(0)
    model = mask_rcnn_fpn(3, min_size=96, max_size=128).train()
    seen = {}

    def keep(module, args, out):
        seen["regression"] = out[1]

    model.roi_heads.box_predictor.register_forward_hook(keep)
    sample = model.roi_heads.select_training_samples

    def recorded(proposals, targets):
        out = sample(proposals, targets)
        seen["labels"], seen["targets"] = out[2], out[3]
        return out

    model.roi_heads.select_training_samples = recorded
    image = torch.rand(3, 96, 128)
    masks = torch.zeros(2, 96, 128, dtype=torch.uint8)
    masks[0, 10:60, 10:70], masks[1, 40:90, 60:120] = 1, 1
    target = {"boxes": torch.tensor([[10.0, 10, 70, 60], [60.0, 40, 120, 90]]), "labels": torch.tensor([1, 2])}
    losses = model([image], [{**target, "masks": masks}])
    expected = roi_l1_loss(seen["regression"], seen["labels"], seen["targets"])
    assert losses["loss_box_reg"].item() == pytest.approx(expected.item()) and expected > 0
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert "_sampled" not in model.roi_heads.__dict__  # nothing of the step is kept on the module


# ----------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------


def test_the_coco_schedule_is_twelve_epochs_with_steps_after_eight_and_eleven():
    """MMSelfSup 0.x's schedule_1x.py: 12 epochs, lr x 0.1 after epochs 8 and 11, 1000 linear warm-up iterations
    from 0.001; an epoch of the 117,266 annotated training images at batch 16 is 7,330 iterations."""
    s = finetune.PRESETS["coco_mask_1x"]
    assert finetune.COCO_EPOCH == -(-117_266 // 16)
    assert (s.iterations, s.steps, s.warmup, s.batch_size, s.lr) == (87_960, (58_640, 80_630), 1000, 16, 0.02)
    lrs = s.lrs()
    assert len(lrs) == 87_960 and lrs[1000] == pytest.approx(0.02) and lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[58_639] == pytest.approx(0.02) and lrs[58_640] == pytest.approx(0.002)
    assert lrs[80_630] == pytest.approx(0.0002)
    d2 = finetune.PRESETS["coco_mask_1x_detectron2"]
    assert (d2.iterations, d2.steps, d2.warmup) == (90_000, (60_000, 80_000), 1000)


def test_coco_training_leaves_out_images_without_annotations(tmp_path):
    import json

    from PIL import Image

    from mocolab.transfer.datasets import COCODetection

    (tmp_path / "images").mkdir()
    images = [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": 40} for i, w in ((1, 50), (2, 50), (3, 20))]
    for im in images:
        Image.new("RGB", (im["width"], 40)).save(tmp_path / "images" / im["file_name"])
    ann = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}
    crowd = {**ann, "id": 2, "image_id": 3, "iscrowd": 1, "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]}
    ann["segmentation"] = [[1, 1, 11, 1, 11, 11, 1, 11]]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": [ann, crowd], "categories": [{"id": 7, "name": "x"}]}))
    assert COCODetection(tmp_path / "images", path).ids == [1, 2, 3]
    # Image 2 has no annotation; image 3 only a crowd one (kept by mmdet) but a side of 20 < 32 (left out).
    assert COCODetection(tmp_path / "images", path, skip_empty=True).ids == [1]


# ----------------------------------------------------------------------------
# The segmentation pipeline
# ----------------------------------------------------------------------------


def test_training_scales_are_the_references_and_testing_is_at_short_side_512():
    """A VOC-sized 375 x 500 image: rescaled to fit (2048, 512) x U(0.5, 2), its short side is uniform on
    [256, 1024] (the long side never binds); MMSelfSup's reference scale, about 1.37x what scaling the original
    image by U(0.5, 2) gave (short side 187-750)."""
    torch.manual_seed(0)
    sizes = np.array([seg_transforms.train_size(375, 500, 512) for _ in range(4000)])
    short = sizes.min(1)
    assert short.min() >= 256 and short.max() <= 1024
    assert np.allclose(sizes[:, 1] / sizes[:, 0], 500 / 375, atol=0.01)  # the aspect ratio is kept
    quantiles = np.quantile(short, [0.1, 0.25, 0.5, 0.75, 0.9])
    assert np.allclose(quantiles, 256 + 768 * np.array([0.1, 0.25, 0.5, 0.75, 0.9]), atol=768 * 0.03)
    assert seg_transforms.fit_size(375, 500, 512, 2048) == (512, 683)
    assert seg_transforms.fit_size(300, 2000, 512, 2048) == (307, 2048)  # a panorama: the long side binds
    image = seg_transforms.eval_view(torch.rand(3, 375, 500), 512)
    assert image.shape == (3, 512, 683)


def test_crops_are_redrawn_while_one_class_dominates():
    """cat_max_ratio 0.75: a crop is drawn again (10 times at most) while one class covers 75% of its labelled
    pixels or it holds one class. The probability p that one random crop passes, counted over every offset, gives
    1 - (1 - p)^11 for the pipeline; the measured rate matches it, and the ignore label does not count."""
    mask = torch.zeros(40, 40, dtype=torch.long)
    mask[28:, 28:] = 5  # a small object in a corner: most 16 x 16 crops hold background alone
    mask[:, :4] = 255
    crop = 16
    offsets = [(t, left) for t in range(40 - crop + 1) for left in range(40 - crop + 1)]

    def passes(t, left):
        window = mask[t : t + crop, left : left + crop].numpy()
        labelled = window[window != 255]
        values, counts = np.unique(labelled, return_counts=True)
        return len(values) > 1 and counts.max() / counts.sum() < 0.75

    p = np.mean([passes(t, left) for t, left in offsets])
    expected = 1 - (1 - p) ** 11
    torch.manual_seed(0)
    image = torch.rand(3, 40, 40)
    trials = 3000
    hits = sum(seg_transforms.balanced(seg_transforms.random_crop(image, mask, crop)[1]) for _ in range(trials))
    assert 0.02 < p < 0.3
    assert hits / trials == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / trials))
    assert not seg_transforms.balanced(torch.tensor([[1, 1, 1, 255], [1, 1, 1, 255]]))
    assert seg_transforms.balanced(torch.tensor([[1, 1, 2, 255], [1, 2, 2, 255]]))


def test_photometric_distortion_replayed_with_colorsys():
    """Each seed's draws replayed by hand (the coins and amounts in the order the pipeline draws them) and applied
    pixel by pixel with Python's colorsys: brightness adds, contrast multiplies, saturation scales HSV's S, hue
    shifts H by d / 180 of the circle, each clipped to [0, 1]."""
    gen_image = torch.Generator().manual_seed(1)
    image = torch.rand(3, 3, 4, generator=gen_image)
    seen_each = np.zeros(4)
    for seed in range(40):
        torch.manual_seed(seed)
        got = seg_transforms.photometric_distortion(image.clone())
        torch.manual_seed(seed)
        coin = lambda: bool(torch.randint(0, 2, ()))  # noqa: E731
        uniform = lambda a, b: float(torch.empty(()).uniform_(a, b))  # noqa: E731
        pixels = image.permute(1, 2, 0).reshape(-1, 3).double().numpy()
        if coin():
            pixels = np.clip(pixels + uniform(-32, 32) / 255, 0, 1)
            seen_each[0] += 1
        last = coin()
        if not last and coin():
            pixels = np.clip(pixels * uniform(0.5, 1.5), 0, 1)
            seen_each[1] += 1
        if coin():
            f = uniform(0.5, 1.5)
            hsv = [colorsys.rgb_to_hsv(*p) for p in pixels]
            pixels = np.array([colorsys.hsv_to_rgb(h, min(s * f, 1.0), v) for h, s, v in hsv])
            seen_each[2] += 1
        if coin():
            d = int(torch.randint(-18, 18, ())) / 180
            hsv = [colorsys.rgb_to_hsv(*p) for p in pixels]
            pixels = np.array([colorsys.hsv_to_rgb((h + d) % 1.0, s, v) for h, s, v in hsv])
            seen_each[3] += 1
        if last and coin():
            pixels = np.clip(pixels * uniform(0.5, 1.5), 0, 1)
            seen_each[1] += 1
        expected = torch.from_numpy(pixels).float().reshape(3, 4, 3).permute(2, 0, 1)
        assert torch.allclose(got, expected, atol=1e-5), seed
    assert (seen_each > 8).all() and (seen_each < 32).all()  # each change happened, about half the time
