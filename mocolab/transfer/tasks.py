"""The transfer tasks of the reference page, one record each (docs/protocols.md section 3).

    TASKS["voc_detection"].build(21, backbone)      # the task's reference model
    TASKS["coco"].evaluate(model, test_set, device)  # its metrics on the test set

A task is everything the fine-tuning job (job.py) needs to know about one row:
its data in their on-disk layout, its model, its loss, how a batch is put
together, its metric and how one prediction is drawn. The job and the
`TransferConfig.task` choices are built from this table; a new task is one
more record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from . import finetune, models
from .datasets import COCODetection, VOCDetection, VOCSegmentation


@dataclass(frozen=True)
class Task:
    """One transfer row: what it trains on, what it trains, how it is scored."""

    model_name: str  # as the reference page names the model
    datasets: Callable  # (a TransferConfig) -> (train set, test set), read from its data_root
    build: Callable[..., nn.Module]  # (num_classes, backbone weights or None, arch=, **model options) -> the model
    background: bool  # the detectors count a background class beside the dataset's classes
    step: Callable  # (model, batch, device) -> (loss, its terms): one training step's loss (finetune.py)
    evaluate: Callable  # (model, test set, device) -> {metric: value}
    predict: Callable  # (model, one [0, 1] image, device) -> its prediction, for plotting
    collate: Callable | None = None  # how a batch of samples is put together; None: torch's default

    def num_classes(self, classes: list) -> int:
        """The model's output classes: C + 1 with the background (21 for VOC detection), else C."""
        return len(classes) + 1 if self.background else len(classes)


def _voc_detection_sets(cfg):
    root = Path(cfg.data_root)
    sets = tuple(tuple(s.strip().split("/")) for s in cfg.train_sets.split(","))
    return (VOCDetection(root, sets=sets, flip=True), VOCDetection(root, sets=(("2007", "test"),), keep_difficult=True))


def _coco_sets(cfg):
    root = Path(cfg.data_root)
    return (
        COCODetection(
            root / "train2017", root / "annotations" / "instances_train2017.json", flip=True, skip_empty=True
        ),
        COCODetection(root / "val2017", root / "annotations" / "instances_val2017.json"),
    )


def _voc_segmentation_sets(cfg):
    root = Path(cfg.data_root)
    # The reference's img_scale (2048, 512) is 4 and 1 times its 512 crop: a smaller crop scales both with it.
    return (
        VOCSegmentation(root, "train", augmented=True, crop=cfg.crop, flip=True),
        VOCSegmentation(root, "val", test_scale=cfg.crop),
    )


def _fcn(num_classes: int, backbone: dict | None = None, arch=None, **options) -> nn.Module:
    return models.fcn_r50_d8(num_classes, backbone, arch)  # its sizes are the crop's: no detector options


TASKS: dict[str, Task] = {
    "voc_detection": Task(
        "Faster R-CNN R50-C4",
        _voc_detection_sets,
        models.faster_rcnn_c4,
        True,
        finetune.detection_step,
        finetune.evaluate_voc_detection,
        finetune.predict_detection,
        finetune.collate_detection,
    ),
    "coco": Task(
        "Mask R-CNN R50-FPN",
        _coco_sets,
        models.mask_rcnn_fpn,
        True,
        finetune.detection_step,
        finetune.evaluate_coco,
        finetune.predict_detection,
        finetune.collate_detection,
    ),
    "voc_segmentation": Task(
        "FCN R50-D8",
        _voc_segmentation_sets,
        _fcn,
        False,
        finetune.segmentation_step,
        finetune.evaluate_segmentation,
        finetune.predict_segmentation,
    ),
}
