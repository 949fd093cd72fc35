"""The published numbers mocolab reproduces, in one place (docs/protocols.md gives their sources).

MoCo v2, 200 epochs of ImageNet (the MMSelfSup benchmark page, and the
official repository where it reports its own), and the official CIFAR-10 demo.
Tables and notebooks read them from here; no cell types a reference number.
"""

from __future__ import annotations

LOW_SHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)

PRETRAIN = {
    # kNN top-1 of the CIFAR-10 demo (k = 200, T = 0.1, head output) at 200 / 400 / 800 epochs.
    "cifar10_demo_knn": {
        "asymmetric": {200: 82.6, 400: 86.3, 800: 88.7},
        "symmetric": {200: 85.3, 400: 88.5, 800: 89.7},
    },
    "imagenet_linear_top1": 67.5,  # +- 0.1 over 5 runs (official); 67.7 for the released model
}

EVALUATION = {
    "knn_imagenet": {10: 55.6, 20: 55.7, 100: 53.7, 200: 52.5},
    "svm_voc07": {"feat5": 84.04},
    "lowshot_voc07": dict(zip(LOW_SHOT_KS, (43.14, 53.29, 65.34, 71.03, 75.42, 78.48, 80.88, 82.23))),
    "linear_imagenet": {
        "feat1": 15.96,
        "feat2": 34.22,
        "feat3": 45.78,
        "feat4": 61.11,
        "feat5": 66.24,
        "avgpool": 67.58,
    },
    "linear_places205": {"feat1": 20.92, "feat2": 35.72, "feat3": 42.62, "feat4": 49.79, "feat5": 52.25},
}

# Transfer rows: MMSelfSup's numbers, and where it differs, the official repository's (detectron2).
TRANSFER = {
    "voc_detection": {"AP50": 81.06},
    "coco": {"box AP": 40.2, "box AP50": 59.7, "box AP75": 44.2, "mask AP": 36.1, "mask AP50": 56.7, "mask AP75": 38.8},
    "voc_segmentation": {"mIoU": 67.55},
}
TRANSFER_OFFICIAL = {"voc_detection": {"AP50": 82.4, "AP": 57.0, "AP75": 63.6}}
TRANSFER_METRICS = {
    "voc_detection": ("AP50", "AP", "AP75"),
    "voc_segmentation": ("mIoU", "aAcc"),
    "coco": ("box AP", "box AP50", "box AP75", "mask AP", "mask AP50", "mask AP75"),
}


def transfer_reference(task: str, metric: str) -> str:
    """The reference for one metric of a transfer row, as a table cell: "81.06 (official 82.4)", "-"."""
    ours, official = TRANSFER[task].get(metric), TRANSFER_OFFICIAL.get(task, {}).get(metric)
    if ours is not None and official is not None:
        return f"{ours} (official {official})"
    if ours is not None:
        return f"{ours}"
    return f"{official} (official)" if official is not None else "-"
