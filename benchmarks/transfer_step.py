"""Seconds per fine-tuning iteration of each transfer row, at the reference sizes, on this device.

One process stands for one GPU of the reference's 8: it takes 2 of the 16 images
of an iteration (detection: synthetic 500 x 375 VOC-like or 640 x 480 COCO-like
images with a few boxes, resized by the model to the preset's multi-scale short
side; segmentation: 512 x 512 crops). The estimate of a whole row is
s/iteration x the preset's iterations, as if 8 such devices ran in parallel
with no communication: it leaves out SyncBatchNorm's (an all-reduce of every
BN layer's statistics in the forward pass and of their gradients in the
backward pass, which nothing overlaps) and DDP's gradient all-reduce (which
mostly overlaps the backward pass). So it is a lower bound.

    python benchmarks/transfer_step.py --device cuda --iterations 20
    python benchmarks/transfer_step.py --rows voc_detection --iterations 2   # a CPU
"""

from __future__ import annotations

import argparse
import time

import torch

from mocolab.transfer import finetune, models

ROWS = {  # row -> (model, preset, image size (w, h) or crop, classes)
    "voc_detection": (models.faster_rcnn_c4, "voc_c4_24k", (500, 375), 21),
    "coco": (models.mask_rcnn_fpn, "coco_mask_1x", (640, 480), 81),
    "voc_segmentation": (models.fcn_r50_d8, "voc_seg_20k", 512, 21),
}


def synthetic_batch(row: str, per_gpu: int, generator: torch.Generator):
    _, _, size, classes = ROWS[row]
    if row == "voc_segmentation":
        images = torch.rand(per_gpu, 3, size, size, generator=generator)
        masks = torch.randint(0, classes, (per_gpu, size, size), generator=generator)
        return images, masks
    w, h = size
    images, targets = [], []
    for _ in range(per_gpu):
        xy = torch.rand(4, 2, generator=generator) * torch.tensor([w * 0.6, h * 0.6])
        wh = 40 + torch.rand(4, 2, generator=generator) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        target = {"boxes": boxes, "labels": torch.randint(1, classes, (4,), generator=generator)}
        if row == "coco":
            masks = torch.zeros(4, h, w, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[k, y1:y2, x1:x2] = 1
            target["masks"] = masks
        images.append(torch.rand(3, h, w, generator=generator))
        targets.append(target)
    return tuple(images), tuple(targets)


def time_row(row: str, device: torch.device, iterations: int, per_gpu: int) -> float:
    build, preset, _, classes = ROWS[row]
    torch.manual_seed(0)
    model = build(classes).to(device).train()
    schedule = finetune.PRESETS[preset]
    optimizer = finetune.sgd(model, schedule)
    step = finetune.segmentation_step if row == "voc_segmentation" else finetune.detection_step
    batch = synthetic_batch(row, per_gpu, torch.Generator().manual_seed(0))
    times = []
    for it in range(iterations + 1):  # the first iteration (allocations, cuDNN autotuning) is not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        loss, _ = step(model, batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if it:
            times.append(time.perf_counter() - tic)
    return sum(times) / len(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per row (after one warm-up)")
    parser.add_argument("--per-gpu", type=int, default=2, help="images per device per iteration (16 / 8 GPUs)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.per_gpu} images per iteration; {args.iterations} timed iterations\n")
    print("SyncBatchNorm and DDP communication are not included: the row times are lower bounds.\n")
    print("| row | model | s/iteration | preset iterations | estimated row time on 8 such devices |")
    print("|---|---|---|---|---|")
    for row in args.rows:
        seconds = time_row(row, device, args.iterations, args.per_gpu)
        total = finetune.PRESETS[ROWS[row][1]].iterations
        print(
            f"| {row} | {ROWS[row][0].__name__} | {seconds:.3f} | {total:,} | {seconds * total / 3600:.1f} h |",
            flush=True,
        )


if __name__ == "__main__":
    main()
