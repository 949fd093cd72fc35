"""Fine-tuning and evaluating the transfer models: the reference schedules as presets, one loop per task.

Presets (docs/protocols.md, "Transfer to detection and segmentation"):

    voc_c4_24k      Faster R-CNN R50-C4, VOC07+12 trainval -> VOC07 test: 24k iterations, batch 16,
                    lr 0.02, x0.1 at 18k and 22k, 100 warm-up iterations, short side 480-800
    coco_mask_1x    Mask R-CNN R50-FPN, COCO 2017: mmdet's 1x, 12 epochs of the 117,266 training images
                    with annotations at batch 16 (7,330 iterations each, COCO_EPOCH): 87,960 iterations, lr 0.02,
                    x0.1 after epochs 8 and 11 (58,640 and 80,630), 1000 warm-up iterations,
                    short side 640-800
    coco_mask_1x_detectron2
                    detectron2's 1x, which MoCo's own detection code runs: 90k iterations, x0.1 at 60k and 80k
    voc_seg_20k     FCN R50-D8, VOC12 + aug: 20k iterations, batch 16, 512 x 512 crops, lr 0.01,
                    poly (power 0.9, floor 1e-4), wd 5e-4, auxiliary loss weight 0.4
    tiny            a few iterations at small sizes, for a CPU

`train` is the one loop behind every task: it takes a step function
(`detection_step` or `segmentation_step`), follows the seeded iteration stream
(stream.py), and, under DDP, averages gradients over the processes (the model
comes wrapped, with SyncBatchNorm on GPUs: job.py sets that up). The
evaluations shard the test set over the processes and gather the results, so
each image is evaluated once. `job.fine_tune` runs a whole row, with
checkpoints, on one device or N processes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import distributed as dist_
from ..augment import IMAGENET_MEAN, IMAGENET_STD
from ..augment.batched import normalize
from ..run.workers import loader_processes
from ..schedule import lr_schedule
from .metrics import confusion_matrix, mean_iou, voc_detection_metrics
from .stream import IterationBatches, SeededStream, iteration_seed


@dataclass(frozen=True)
class Schedule:
    """A fine-tuning schedule, counted in iterations (docs/protocols.md, transfer rows)."""

    iterations: int
    batch_size: int  # global: images per iteration over all processes
    lr: float
    steps: tuple = ()  # iterations where lr drops x0.1 (step schedule)
    poly_power: float = 0.0  # > 0: poly schedule (lr - min_lr) * (1 - it / iterations) ** power + min_lr
    min_lr: float = 0.0  # the poly schedule's floor (MMSegmentation's schedule_20k: 1e-4)
    warmup: int = 0  # linear warm-up iterations (from lr / 1000, as detectron2's default factor)
    weight_decay: float = 1e-4
    momentum: float = 0.9

    def lrs(self) -> np.ndarray:
        """The lr of every iteration (mocolab.schedule.lr_schedule, counted in iterations)."""
        if self.poly_power:
            return lr_schedule(
                self.lr,
                self.iterations,
                shape="poly",
                power=self.poly_power,
                min_lr=self.min_lr,
                warmup_epochs=self.warmup,
            )
        return lr_schedule(self.lr, self.iterations, shape="step", milestones=self.steps, warmup_epochs=self.warmup)


# Iterations in one epoch of COCO 2017 train at batch 16, as mmdet counts them: its training set keeps the 117,266
# of 118,287 images that have annotations, and its group sampler rounds each aspect-ratio group (wide, tall) up to
# whole batches: 117,266 / 16 = 7,329.1, so 7,330 (7,331 if both groups round up; a 0.01% difference).
COCO_EPOCH = 7_330

PRESETS = {
    "voc_c4_24k": Schedule(24_000, 16, 0.02, steps=(18_000, 22_000), warmup=100),
    # MMSelfSup 0.x's _base_/schedules/schedule_1x.py: 12 epochs, steps after 8 and 11, 1000 warm-up iterations.
    "coco_mask_1x": Schedule(12 * COCO_EPOCH, 16, 0.02, steps=(8 * COCO_EPOCH, 11 * COCO_EPOCH), warmup=1000),
    "coco_mask_1x_detectron2": Schedule(90_000, 16, 0.02, steps=(60_000, 80_000), warmup=1000),
    "voc_seg_20k": Schedule(20_000, 16, 0.01, poly_power=0.9, min_lr=1e-4, weight_decay=5e-4),
    "tiny": Schedule(12, 2, 0.01, warmup=2),
}


# The "tiny" preset's model options: fewer proposals and RoIs (res5 runs on each RoI), small images, and every
# anchor in the RPN's targets: at 96-160 pixels most of the 32-512 pixel anchors cross the image's border, and the
# reference C4 rule (only anchors inside) left the RPN too little to learn from (AP50 0.0 against 25.6 on notebook
# 05's generated scenes, 60 iterations, seed 0).
TINY_MODEL_OPTIONS = {
    "allowed_border": None,
    "min_size": 96,
    "max_size": 160,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 32,
}


def sgd(model, s: Schedule) -> torch.optim.SGD:
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )


def collate_detection(batch):
    return tuple(zip(*batch))


def detection_step(model, batch, device) -> tuple[torch.Tensor, dict]:
    """The sum of torchvision's detection losses (RPN objectness and boxes, RoI classes and boxes, masks)."""
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: t[k].to(device, non_blocking=True) for k in ("boxes", "labels", "masks") if k in t} for t in targets]
    losses = model(images, targets)
    return sum(losses.values()), losses


def segmentation_step(model, batch, device, aux_weight: float = 0.4) -> tuple[torch.Tensor, dict]:
    """Pixel-wise cross-entropy (255 ignored) on the main FCN head, plus aux_weight x the auxiliary head's."""
    images, masks = batch
    out = model(normalize(images.to(device, non_blocking=True), IMAGENET_MEAN, IMAGENET_STD))
    masks = masks.to(device, non_blocking=True)
    losses = {"loss_seg": torch.nn.functional.cross_entropy(out["out"], masks, ignore_index=255)}
    if "aux" in out:
        losses["loss_aux"] = aux_weight * torch.nn.functional.cross_entropy(out["aux"], masks, ignore_index=255)
    return sum(losses.values()), losses


def train(
    model,
    step: Callable,
    dataset,
    schedule: Schedule,
    optimizer=None,
    device="cpu",
    seed: int = 0,
    start: int = 0,
    rows: list | None = None,
    log_every: int = 20,
    workers: int = 2,
    collate_fn=None,
    checkpoint: Callable | None = None,
    checkpoint_every: int = 0,
    progress=print,
) -> list[dict]:
    """SGD from iteration `start` to schedule.iterations; returns (and extends) the logged rows.

    model: the module to call (DDP-wrapped under several processes); step(model, batch, device) gives
    (loss, parts). Each process takes batch_size / world images of every iteration. Logged losses are
    the means over processes. checkpoint(iteration, rows) is called every checkpoint_every iterations
    and at the end.
    """
    rank, world = dist_.rank(), dist_.world_size()
    optimizer = optimizer or sgd(model, schedule)
    rows = [] if rows is None else rows
    model.train()
    loader = DataLoader(
        SeededStream(dataset, seed),
        batch_sampler=IterationBatches(schedule.batch_size, start, schedule.iterations, rank, world),
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.device(device).type == "cuda",
        **loader_processes(workers),
    )
    lrs = schedule.lrs()
    offset = rows[-1]["seconds"] if rows else 0.0  # a resumed run keeps counting its time
    tic = time.perf_counter()
    for it, batch in enumerate(loader, start=start):
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[it])  # a Python float: checkpoints hold no NumPy values
        torch.manual_seed(iteration_seed(seed, it, rank))  # multi-scale size, RPN / RoI sampling
        loss, parts = step(model, batch, device)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(
                f"the loss is {loss.item()} at iteration {it + 1}: lower the lr "
                f"(a random backbone needs a smaller one than a pretrained one)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = it + 1
        if done % log_every == 0 or it == 0 or done == schedule.iterations:
            values = dist_.all_reduce_mean(torch.stack([loss.detach(), *[v.detach() for v in parts.values()]]))
            row = {
                "iteration": done,
                "lr": float(lrs[it]),
                "loss": values[0].item(),
                **{k: v.item() for k, v in zip(parts, values[1:])},
                "seconds": round(offset + time.perf_counter() - tic, 3),
            }
            rows.append(row)
            progress(f"iteration {done}/{schedule.iterations}  loss {row['loss']:.3f}  lr {row['lr']:.4g}")
        if checkpoint and ((checkpoint_every and done % checkpoint_every == 0) or done == schedule.iterations):
            checkpoint(done, rows)
    return rows


def shard(n: int) -> range:
    """This process's share of n test images (every world-th one): each image is evaluated once."""
    return range(dist_.rank(), n, dist_.world_size())


@torch.no_grad()
def evaluate_voc_detection(model, dataset, device="cpu", score_threshold: float = 0.0) -> dict:
    """AP, AP50, AP75 on a VOCDetection set (keep_difficult=True), detectron2's VOC evaluation."""
    model.to(device).eval()
    classes = dataset.classes
    detections = {c: [] for c in classes}
    ground_truth = {c: {} for c in classes}
    for index in shard(len(dataset)):
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
    parts = dist_.all_gather_objects((detections, ground_truth))  # every rank's share, in rank order
    detections = {c: [d for part, _ in parts for d in part[c]] for c in classes}
    ground_truth = {c: {i: gt for _, part in parts for i, gt in part[c].items()} for c in classes}
    return voc_detection_metrics(detections, ground_truth, classes)


@torch.no_grad()
def predict_segmentation(model, image: torch.Tensor, device="cpu", size=None) -> torch.Tensor:
    """The class of every pixel (H x W) of one [0, 1] image (3 x H x W), normalised as in training. size: the
    (H, W) to classify at, the mask's when the image was rescaled for testing: the logits are resized there
    (bilinear) before the argmax, as MMSegmentation resizes them to the original image."""
    model.to(device).eval()
    logits = model(normalize(image[None].to(device), IMAGENET_MEAN, IMAGENET_STD))["out"]
    if size is not None and tuple(size) != tuple(logits.shape[-2:]):
        logits = torch.nn.functional.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].cpu()


@torch.no_grad()
def predict_detection(model, image: torch.Tensor, device="cpu") -> dict:
    """torchvision's detections (boxes, labels, scores, masks for Mask R-CNN) of one [0, 1] image, on the CPU."""
    model.to(device).eval()
    return {k: v.cpu() for k, v in model([image.to(device)])[0].items()}


@torch.no_grad()
def evaluate_segmentation(model, dataset, num_classes: int = 21, device="cpu") -> dict:
    """mIoU over whole images (no crop), 255 ignored, scored at each mask's size (the dataset may rescale the
    image: VOCSegmentation's test_scale)."""
    total = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for index in shard(len(dataset)):
        image, mask = dataset[index]
        total += confusion_matrix(predict_segmentation(model, image, device, mask.shape), mask, num_classes)
    return mean_iou(sum(dist_.all_gather_objects(total)))


@torch.no_grad()
def evaluate_coco(model, dataset, device="cpu", masks: bool = True) -> dict:
    """COCO box (and mask) AP of a torchvision detector on a COCODetection set, through COCOeval."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from .metrics import coco_metrics

    model.to(device).eval()
    results, image_ids = [], []
    for index in shard(len(dataset)):
        image, target = dataset[index]
        image_ids.append(target["image_id"])
        out = model([image.to(device)])[0]
        for k, (box, score, label) in enumerate(
            zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist())
        ):
            x1, y1, x2, y2 = box
            result = {
                "image_id": target["image_id"],
                "category_id": dataset.category_ids[label - 1],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
            }
            if masks and "masks" in out:
                binary = (out["masks"][k, 0] > 0.5).cpu().numpy().astype(np.uint8)
                rle = mask_utils.encode(np.asfortranarray(binary))
                rle["counts"] = rle["counts"].decode()
                result["segmentation"] = rle
            results.append(result)
    parts = dist_.all_gather_objects((results, image_ids))
    results = [r for part, _ in parts for r in part]
    image_ids = [i for _, ids in parts for i in ids]  # only these images count (a test_limit subset, say)
    metrics = {f"box {k}": v for k, v in coco_metrics(dataset.coco, results, "bbox", image_ids).items()}
    if masks:
        metrics.update({f"mask {k}": v for k, v in coco_metrics(dataset.coco, results, "segm", image_ids).items()})
    return metrics
