"""Transfer metrics: VOC detection AP (as detectron2 reports it), COCO AP (pycocotools), segmentation mIoU.

- VOC: the PASCAL devkit's voc_eval as detectron2's PascalVOCDetectionEvaluator
  runs it: per class, detections sorted by score are matched greedily to
  unmatched ground truth of IoU > t (pixel-inclusive boxes, the +1
  convention), "difficult" objects count neither way, AP by the VOC2007
  11-point rule. AP50 at t = 0.5, AP75 at 0.75, AP the mean over t = 0.50:0.05:0.95.
- COCO: pycocotools' COCOeval for boxes and masks, unchanged.
- mIoU: per-class IoU from a confusion matrix, pixels labelled 255 ignored,
  the mean over classes that occur (in prediction or ground truth).
"""

from __future__ import annotations

import numpy as np
import torch


# ----------------------------------------------------------------------------
# VOC detection
# ----------------------------------------------------------------------------


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Area under the precision-recall curve: the 11-point rule (VOC2007) or the exact area (VOC2010+)."""
    if use_07_metric:
        return float(
            np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(0.0, 1.1, 0.1)])
        )
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou_inclusive(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one box against many, pixel-inclusive (x2 - x1 + 1), as the VOC devkit computes it."""
    iw = np.maximum(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    union = (
        (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
        + (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0)
        - inter
    )
    return inter / union


def voc_class_ap(detections: list, ground_truth: dict, iou: float = 0.5, use_07_metric: bool = True) -> float:
    """AP of one class. detections: (image_id, score, box x1 y1 x2 y2); ground_truth: image_id ->
    (boxes K x 4, difficult K bools)."""
    matched = {img: np.zeros(len(boxes), bool) for img, (boxes, _) in ground_truth.items()}
    positives = sum(int((~np.asarray(d, bool)).sum()) for _, d in ground_truth.values())
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, i in enumerate(order):
        img, _, box = detections[i]
        boxes, difficult = ground_truth.get(img, (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(boxes) == 0:
            fp[rank] = 1
            continue
        overlaps = _iou_inclusive(np.asarray(box, float), np.asarray(boxes, float))
        j = int(overlaps.argmax())
        if overlaps[j] <= iou:  # the devkit requires IoU strictly above the threshold
            fp[rank] = 1
        elif not difficult[j]:
            if matched[img][j]:
                fp[rank] = 1  # a duplicate detection of an already found object
            else:
                tp[rank], matched[img][j] = 1, True
    if positives == 0:
        return float("nan")
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, use_07_metric)


def voc_detection_metrics(detections: dict, ground_truth: dict, classes: list, use_07_metric: bool = True) -> dict:
    """AP, AP50, AP75 (in %) over classes, detectron2's way. detections: class -> list of
    (image_id, score, box); ground_truth: class -> {image_id: (boxes, difficult)}."""
    thresholds = np.arange(0.5, 0.96, 0.05)
    per_t = {
        round(t, 2): [voc_class_ap(detections.get(c, []), ground_truth.get(c, {}), t, use_07_metric) for c in classes]
        for t in thresholds
    }
    mean = {t: 100 * float(np.nanmean(v)) for t, v in per_t.items()}
    return {
        "AP": float(np.mean(list(mean.values()))),
        "AP50": mean[0.5],
        "AP75": mean[0.75],
        "AP50_per_class": dict(zip(classes, (100 * np.array(per_t[0.5])).tolist())),
    }


# ----------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------


def coco_metrics(coco_gt, results: list[dict], iou_type: str = "bbox", image_ids=None) -> dict:
    """pycocotools' COCOeval of results (COCO result dicts) against a COCO ground-truth object.

    image_ids: the images evaluated (default: all of the ground truth's). Returns AP, AP50, AP75,
    APs, APm, APl in %; an empty result list scores 0.
    """
    from pycocotools.cocoeval import COCOeval

    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if not results:
        return dict.fromkeys(names, 0.0)
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {name: 100 * float(v) for name, v in zip(names, evaluator.stats[:6])}


# ----------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int = 21, ignore_index: int = 255
) -> torch.Tensor:
    """num_classes x num_classes counts (rows: ground truth, columns: prediction), ignored pixels dropped."""
    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> dict:
    """mIoU (%) and per-class IoU from an accumulated confusion matrix; classes never seen are NaN."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = tp.sum() / confusion.sum().clamp(min=1)
    return {"mIoU": 100 * float(np.nanmean(iou.numpy())), "aAcc": 100 * float(acc), "IoU": (100 * iou).tolist()}
