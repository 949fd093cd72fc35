"""Transfer metrics on hand-made cases: perfect predictions give 1.0, a known ranking gives the hand-computed AP."""

import numpy as np
import pytest
import torch

from mocolab.transfer.metrics import (
    coco_metrics,
    confusion_matrix,
    mean_iou,
    voc_ap,
    voc_class_ap,
    voc_detection_metrics,
)


def gt_two_images():
    # img1: one box; img2: one box and one "difficult" box.
    return {
        "img1": (np.array([[10, 10, 50, 50]]), np.array([False])),
        "img2": (np.array([[100, 100, 150, 140], [0, 0, 20, 20]]), np.array([False, True])),
    }


def test_hand_computed_ranking_gives_the_devkits_ap():
    detections = [
        ("img1", 0.9, [10, 10, 50, 50]),  # TP
        ("img2", 0.8, [200, 200, 220, 220]),  # FP: overlaps nothing
        ("img2", 0.7, [101, 100, 150, 141]),  # TP (IoU 0.94)
        ("img2", 0.6, [0, 0, 20, 20]),
    ]  # on the difficult object: neither TP nor FP
    # Ranked TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3 -> 11-point AP (6 x 1 + 5 x 2/3) / 11.
    assert voc_class_ap(detections, gt_two_images()) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_class_ap(detections, gt_two_images(), use_07_metric=False) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_duplicates_and_low_overlap_are_false_positives():
    gt = {"a": (np.array([[0, 0, 9, 9]]), np.array([False]))}
    dup = [("a", 0.9, [0, 0, 9, 9]), ("a", 0.8, [0, 0, 9, 9])]
    # TP then FP: precision 1, 1/2 at recall 1 -> every 11-point threshold sees precision 1.
    assert voc_class_ap(dup, gt) == pytest.approx(1.0)
    # Box [0,0,4,9] covers 50 of 100 pixels: IoU exactly 0.5, which the devkit does not count at t = 0.5.
    assert voc_class_ap([("a", 0.9, [0, 0, 4, 9])], gt, iou=0.5) == 0.0
    assert voc_class_ap([("a", 0.9, [0, 0, 4, 9])], gt, iou=0.45) == pytest.approx(1.0)


def test_perfect_detections_score_100_at_every_threshold():
    gt = {"dog": gt_two_images(), "cat": {"img1": (np.array([[5, 5, 30, 40]]), np.array([False]))}}
    dets = {
        c: [(img, 1.0, box) for img, (boxes, diff) in g.items() for box, d in zip(boxes, diff) if not d]
        for c, g in gt.items()
    }
    m = voc_detection_metrics(dets, gt, ["dog", "cat"])
    assert m["AP"] == m["AP50"] == m["AP75"] == pytest.approx(100.0)


def test_voc_ap_11_point_rule_on_a_curve():
    recall, precision = np.array([0.2, 0.4, 0.8]), np.array([1.0, 0.8, 0.5])
    expected = (3 * 1.0 + 2 * 0.8 + 4 * 0.5 + 2 * 0.0) / 11  # t = 0..0.2 | 0.3, 0.4 | 0.5..0.8 | 0.9, 1.0
    assert voc_ap(recall, precision) == pytest.approx(expected)


def test_miou_ignores_255_and_averages_classes_that_occur():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    assert mean_iou(confusion_matrix(target.clamp(max=2), target, num_classes=3))["mIoU"] == pytest.approx(100)
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 1]])
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3; class 2: 1; the 255 pixels do not count.
    m = mean_iou(confusion_matrix(pred, target, num_classes=4))
    assert m["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3) and np.isnan(m["IoU"][3])


def test_coco_perfect_boxes_and_masks_score_100():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    masks = [np.zeros((60, 80), np.uint8) for _ in range(3)]
    masks[0][5:25, 10:40] = 1
    masks[1][30:55, 20:70] = 1
    masks[2][10:50, 50:75] = 1
    anns, results = [], []
    for i, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        box = mask_utils.toBbox(rle).tolist()
        anns.append(
            {
                "id": i + 1,
                "image_id": 1 + i % 2,
                "category_id": 1 + i % 2,
                "segmentation": rle,
                "area": float(m.sum()),
                "bbox": box,
                "iscrowd": 0,
            }
        )
        results.append(
            {"image_id": 1 + i % 2, "category_id": 1 + i % 2, "bbox": box, "segmentation": rle, "score": 0.9}
        )
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 80, "height": 60}, {"id": 2, "width": 80, "height": 60}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    gt.createIndex()
    for iou_type in ("bbox", "segm"):
        assert coco_metrics(gt, [dict(r) for r in results], iou_type)["AP"] == pytest.approx(100.0)
    shifted = [{**r, "bbox": [r["bbox"][0] + 10, r["bbox"][1], r["bbox"][2], r["bbox"][3]]} for r in results]
    assert coco_metrics(gt, shifted, "bbox")["AP"] < 100
