"""Fine-tuning and evaluating the transfer models: the reference schedules as presets, one loop per task.

Presets (PROTOCOLS.md, "Transfer to detection and segmentation"):

    voc_c4_24k      Faster R-CNN R50-C4, VOC07+12 trainval -> VOC07 test: 24k iterations, batch 16,
                    lr 0.02, x0.1 at 18k and 22k, 100 warm-up iterations, short side 480-800
    coco_mask_1x    Mask R-CNN R50-FPN, COCO 2017: 90k iterations, batch 16, lr 0.02,
                    x0.1 at 60k and 80k, 1000 warm-up iterations, short side 640-800
    voc_seg_20k     FCN R50-D8, VOC12 + aug: 20k iterations, batch 16, 512 x 512 crops, lr 0.01,
                    poly (power 0.9), wd 5e-4, auxiliary loss weight 0.4
    tiny            a few iterations at small sizes, for a CPU

These loops run in one process (a batch of `batch_size` images). The
protocol's 8-GPU runs use synchronised BN under DDP, which these loops do not
set up yet; the presets record the schedules for when they do.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..augment import IMAGENET_MEAN, IMAGENET_STD
from ..gpu_augment import normalize
from .metrics import confusion_matrix, mean_iou, voc_detection_metrics


@dataclass(frozen=True)
class Schedule:
    iterations: int
    batch_size: int
    lr: float
    steps: tuple = ()  # iterations where lr drops x0.1 (step schedule)
    poly_power: float = 0.0  # > 0: poly schedule lr * (1 - it / iterations) ** power instead of steps
    warmup: int = 0  # linear warm-up iterations (from lr / 1000, as detectron2's default factor)
    weight_decay: float = 1e-4
    momentum: float = 0.9

    def lr_at(self, it: int) -> float:
        if self.poly_power:
            lr = self.lr * (1 - it / self.iterations) ** self.poly_power
        else:
            lr = self.lr * 0.1 ** sum(it >= s for s in self.steps)
        if it < self.warmup:
            alpha = it / self.warmup
            lr *= 0.001 * (1 - alpha) + alpha
        return lr


PRESETS = {
    "voc_c4_24k": Schedule(24_000, 16, 0.02, steps=(18_000, 22_000), warmup=100),
    "coco_mask_1x": Schedule(90_000, 16, 0.02, steps=(60_000, 80_000), warmup=1000),
    "voc_seg_20k": Schedule(20_000, 16, 0.01, poly_power=0.9, weight_decay=5e-4),
    "tiny": Schedule(12, 2, 0.01, warmup=2),
}


# The "tiny" preset's model options: fewer proposals and RoIs (res5 runs on each RoI), small images.
TINY_MODEL_OPTIONS = {"min_size": 96, "max_size": 160, "rpn_pre_nms_top_n_train": 200,
                      "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100,
                      "box_batch_size_per_image": 32}

REFERENCE = {  # PROTOCOLS.md, MoCo v2 200 epochs
    "voc_detection": {"AP50": 81.06,
                      "note": "MMSelfSup; the official repo (detectron2): AP50 82.4, AP 57.0, AP75 63.6"},
    "coco_detection": {"box AP": 40.2, "box AP50": 59.7, "box AP75": 44.2, "mask AP": 36.1, "mask AP50": 56.7,
                       "mask AP75": 38.8},
    "voc_segmentation": {"mIoU": 67.55},
}


def _sgd(model, s: Schedule):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=s.lr, momentum=s.momentum,
                           weight_decay=s.weight_decay)


def _forever(loader):
    while True:
        yield from loader


def _collate(batch):
    return tuple(zip(*batch))


def train_detection(model, dataset, schedule: Schedule, device="cpu", log_every: int = 20, workers: int = 2,
                    seed: int = 0, progress=print) -> list[dict]:
    """SGD on the sum of torchvision's detection losses; returns a row per logged iteration."""
    model.to(device).train()
    optimizer = _sgd(model, schedule)
    loader = DataLoader(dataset, batch_size=schedule.batch_size, shuffle=True, num_workers=workers,
                        collate_fn=_collate, drop_last=True, generator=torch.Generator().manual_seed(seed))
    rows, tic = [], time.perf_counter()
    for it, (images, targets) in zip(range(schedule.iterations), _forever(loader)):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(it)
        images = [im.to(device) for im in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device),
                    **({"masks": t["masks"].to(device)} if "masks" in t else {})} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"detection loss is {loss.item()} at iteration {it}: lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (it + 1) % log_every == 0 or it == 0 or it + 1 == schedule.iterations:
            rows.append({"iteration": it + 1, "lr": schedule.lr_at(it), "loss": loss.item(),
                         **{k: v.item() for k, v in losses.items()}, "seconds": time.perf_counter() - tic})
            progress(f"iteration {it + 1}/{schedule.iterations}  loss {loss.item():.3f}")
    return rows


@torch.no_grad()
def evaluate_voc_detection(model, dataset, device="cpu", score_threshold: float = 0.0) -> dict:
    """AP, AP50, AP75 on a VOCDetection set (keep_difficult=True), detectron2's VOC evaluation."""
    model.to(device).eval()
    classes = dataset.classes
    detections = {c: [] for c in classes}
    ground_truth = {c: {} for c in classes}
    for index in range(len(dataset)):
        image, target = dataset[index]
        ann = dataset.annotation(index)  # the file's coordinates, difficult objects included
        for c, name in enumerate(classes, start=1):
            keep = ann["labels"] == c
            if keep.any():
                ground_truth[name][ann["image_id"]] = (ann["boxes"][keep], ann["difficult"][keep])
        out = model([image.to(device)])[0]
        boxes = out["boxes"].cpu().clone()
        boxes[:, :2] += 1  # back to the 1-based file convention, as detectron2's evaluator writes them
        for box, score, label in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist()):
            if score >= score_threshold and 1 <= label <= len(classes):
                detections[classes[label - 1]].append((ann["image_id"], score, box))
    return voc_detection_metrics(detections, ground_truth, classes)


def train_segmentation(model, dataset, schedule: Schedule, device="cpu", aux_weight: float = 0.4,
                       log_every: int = 20, workers: int = 2, seed: int = 0, progress=print) -> list[dict]:
    """Pixel-wise cross-entropy (255 ignored) on the main and auxiliary FCN heads."""
    model.to(device).train()
    optimizer = _sgd(model, schedule)
    loader = DataLoader(dataset, batch_size=schedule.batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    rows, tic = [], time.perf_counter()
    for it, (images, masks) in zip(range(schedule.iterations), _forever(loader)):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(it)
        out = model(normalize(images.to(device), IMAGENET_MEAN, IMAGENET_STD))
        masks = masks.to(device)
        loss = criterion(out["out"], masks)
        if "aux" in out:
            loss = loss + aux_weight * criterion(out["aux"], masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (it + 1) % log_every == 0 or it == 0 or it + 1 == schedule.iterations:
            rows.append({"iteration": it + 1, "lr": schedule.lr_at(it), "loss": loss.item(),
                         "seconds": time.perf_counter() - tic})
            progress(f"iteration {it + 1}/{schedule.iterations}  loss {loss.item():.3f}")
    return rows


@torch.no_grad()
def evaluate_segmentation(model, dataset, num_classes: int = 21, device="cpu") -> dict:
    """mIoU over whole images (no crop), 255 ignored."""
    model.to(device).eval()
    total = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for image, mask in dataset:
        logits = model(normalize(image[None].to(device), IMAGENET_MEAN, IMAGENET_STD))["out"]
        total += confusion_matrix(logits.argmax(1)[0].cpu(), mask, num_classes)
    return mean_iou(total)


@torch.no_grad()
def evaluate_coco(model, dataset, device="cpu", masks: bool = True) -> dict:
    """COCO box (and mask) AP of a torchvision detector on a COCODetection set, through COCOeval."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from .metrics import coco_metrics
    model.to(device).eval()
    results = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        out = model([image.to(device)])[0]
        for k, (box, score, label) in enumerate(zip(out["boxes"].tolist(), out["scores"].tolist(),
                                                    out["labels"].tolist())):
            x1, y1, x2, y2 = box
            result = {"image_id": target["image_id"], "category_id": dataset.category_ids[label - 1],
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            if masks and "masks" in out:
                binary = (out["masks"][k, 0] > 0.5).cpu().numpy().astype(np.uint8)
                rle = mask_utils.encode(np.asfortranarray(binary))
                rle["counts"] = rle["counts"].decode()
                result["segmentation"] = rle
            results.append(result)
    metrics = {f"box {k}": v for k, v in coco_metrics(dataset.coco, results, "bbox").items()}
    if masks:
        metrics.update({f"mask {k}": v for k, v in coco_metrics(dataset.coco, results, "segm").items()})
    return metrics
