"""One transfer row as a job: fine-tune on one device or N GPUs, checkpoint, resume, evaluate.

    cfg = TransferConfig(task="voc_detection", weights="runs/in/checkpoint_last.pt",
                         data_root="/data/VOCdevkit", preset="voc_c4_24k", gpus=8,
                         output_dir="runs/voc_det")
    run = fine_tune(cfg)        # starts 8 processes (NCCL, SyncBatchNorm) and waits for them
    run.metrics["AP50"]

The protocol's runs (PROTOCOLS.md) use 8 GPUs, a global batch of 16 and
synchronised BN everywhere: with gpus > 1 each process takes batch_size / gpus
images, the model's BatchNorm layers become SyncBatchNorm (statistics over the
global batch, as with one big GPU) and DDP averages the gradients. With gpus=0
and processes > 1 the same code runs as gloo processes on the CPU, where
SyncBatchNorm does not exist: there `sync_bn=False` (per-process BN) is needed.

The output directory holds:

    config.json          the config, code version, torch version, device, processes
    losses.csv           a row per logged iteration (total and each loss term, lr, seconds)
    log.txt              a line per logged iteration (relayed into the notebook by the launcher)
    checkpoint_last.pt   model, optimiser, iteration, rows; every `checkpoint_every` iterations
    metrics.json         the test metrics, beside the reference numbers

`resume=True` continues from checkpoint_last.pt: the data stream and the
model's random draws depend on (seed, iteration) only (stream.py), so a
resumed run takes the steps the uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record
from torch.utils.data import Subset

from .. import checkpoint as ckpt
from .. import distributed as dist_
from ..config import ConfigError, check_processes, need, world_size_of
from ..runlog import code_version, write_csv
from . import finetune, models
from .datasets import COCODetection, VOCDetection, VOCSegmentation

TASKS = {"voc_detection": "Faster R-CNN R50-C4", "coco": "Mask R-CNN R50-FPN", "voc_segmentation": "FCN R50-D8"}


@dataclass
class TransferConfig:
    task: str = "voc_detection"  # "voc_detection", "coco" or "voc_segmentation"
    weights: str = "none"  # a mocolab checkpoint (ResNet-50, ImageNet stem), "supervised" or "none"
    data_root: str = "data/VOCdevkit"  # VOCdevkit (VOC2007/, VOC2012/) or the COCO folder (train2017/, ...)
    train_sets: str = "2007/trainval,2012/trainval"  # voc_detection: year/split lists to train on
    preset: str = "tiny"  # a finetune.PRESETS schedule: voc_c4_24k, coco_mask_1x, voc_seg_20k, tiny
    iterations: int = 0  # 0: the preset's
    batch_size: int = 0  # global batch over all processes; 0: the preset's (16 in the references)
    lr: float = 0.0  # 0: the preset's
    crop: int = 512  # voc_segmentation training crop
    model_options: dict = field(default_factory=dict)  # torchvision detector options; tiny: small images
    gpus: int = -1  # -1: one GPU if present, else the CPU; 0: CPU; N: N GPUs, one process each
    processes: int = 1  # with gpus=0: CPU processes (gloo)
    sync_bn: bool = True  # SyncBatchNorm over the processes (GPUs only), as the protocol says
    workers: int = 4  # DataLoader worker processes per process
    seed: int = 0
    train_limit: int = 0  # > 0: only the first N training images (a quick try)
    test_limit: int = 0  # > 0: only the first N test images
    log_every: int = 20
    checkpoint_every: int = 1000  # iterations between checkpoints (and always at the end)
    evaluate: bool = True
    output_dir: str = "runs/transfer"
    resume: bool = False

    def __post_init__(self):
        need(self.task in TASKS, f"task={self.task!r}: choose one of {', '.join(TASKS)}")
        need(self.preset in finetune.PRESETS, f"preset={self.preset!r}: choose one of {', '.join(finetune.PRESETS)}")
        check_processes(self.gpus, self.processes)
        need(self.schedule.batch_size % self.world_size == 0,
             f"batch_size={self.schedule.batch_size} does not split over {self.world_size} processes; "
             f"use a multiple of {self.world_size}")
        need(not (self.sync_bn and self.gpus == 0 and self.processes > 1),
             "sync_bn=True needs GPUs (SyncBatchNorm runs on CUDA only); pass sync_bn=False to fine-tune "
             "with per-process BN on CPU processes")

    @property
    def world_size(self) -> int:
        return world_size_of(self.gpus, self.processes)

    @property
    def schedule(self) -> finetune.Schedule:
        s = finetune.PRESETS[self.preset]
        return dataclasses.replace(s, iterations=self.iterations or s.iterations,
                                   batch_size=self.batch_size or s.batch_size, lr=self.lr or s.lr)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TransferRun:
    """What `fine_tune` returns: the output directory, the config, the fine-tuned model, its losses and metrics."""

    output_dir: Path
    config: TransferConfig
    model: torch.nn.Module
    classes: list
    rows: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------
# The row's data and model
# ----------------------------------------------------------------------------

def datasets(cfg: TransferConfig):
    """(train set, test set) of the task, in their real on-disk layouts (see datasets.py)."""
    root = Path(cfg.data_root)
    if cfg.task == "voc_detection":
        sets = tuple(tuple(s.strip().split("/")) for s in cfg.train_sets.split(","))
        train = VOCDetection(root, sets=sets, flip=True)
        test = VOCDetection(root, sets=(("2007", "test"),), keep_difficult=True)
    elif cfg.task == "voc_segmentation":
        train = VOCSegmentation(root, "train", augmented=True, crop=cfg.crop, flip=True)
        test = VOCSegmentation(root, "val")
    else:
        train = COCODetection(root / "train2017", root / "annotations" / "instances_train2017.json", flip=True)
        test = COCODetection(root / "val2017", root / "annotations" / "instances_val2017.json")
    return _first(train, cfg.train_limit), _first(test, cfg.test_limit)


def _first(dataset, n: int):
    if not 0 < n < len(dataset):
        return dataset
    subset = Subset(dataset, range(n))
    # What the evaluations read; the subset's indices below n are the dataset's own.
    for name in ("classes", "annotation", "coco", "category_ids", "ids"):
        if hasattr(dataset, name):
            setattr(subset, name, getattr(dataset, name))
    return subset


def build_model(cfg: TransferConfig, num_classes: int, backbone: dict | None = None) -> torch.nn.Module:
    """The task's reference model (models.py); the tiny preset shrinks the detectors' image sizes."""
    options = cfg.model_options or (finetune.TINY_MODEL_OPTIONS if cfg.preset == "tiny" else {})
    if cfg.task == "voc_detection":
        return models.faster_rcnn_c4(num_classes, backbone, **options)
    if cfg.task == "coco":
        return models.mask_rcnn_fpn(num_classes, backbone, **options)
    return models.fcn_r50_d8(num_classes, backbone)


def num_classes(cfg: TransferConfig, classes: list) -> int:
    """With the background: 21 for VOC detection (20 + 1), C + 1 for COCO; VOC segmentation lists it."""
    return len(classes) if cfg.task == "voc_segmentation" else len(classes) + 1


def evaluate(cfg: TransferConfig, model, test_set, device) -> dict:
    if cfg.task == "voc_detection":
        return finetune.evaluate_voc_detection(model, test_set, device=device)
    if cfg.task == "coco":
        return finetune.evaluate_coco(model, test_set, device=device)
    return finetune.evaluate_segmentation(model, test_set, device=device)


# ----------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------

def fine_tune(cfg: TransferConfig, progress: bool = True) -> TransferRun:
    """Fine-tune and evaluate as `cfg` says, writing everything to cfg.output_dir (see the module doc).

    With gpus > 1 (or gpus=0 and processes > 1) this starts the processes through torch's elastic
    launcher, as pretraining does, and returns the run read back from its checkpoint.
    """
    if cfg.world_size > 1 and not dist_.launched_by_torchrun() and not dist_.is_distributed():
        from ..launch import start_processes
        preflight(cfg)
        start_processes(_worker, cfg.to_dict(), cfg.world_size, cfg.gpus > 1, cfg.output_dir, progress)
        return load_transfer_run(cfg.output_dir)
    return transfer_worker(cfg, progress)


def preflight(cfg: TransferConfig):
    """What can fail before any process starts: the output directory, the checkpoint, the device."""
    from ..train import resolve_device
    last = Path(cfg.output_dir) / "checkpoint_last.pt"
    if not cfg.resume and last.exists():
        raise ConfigError(f"{cfg.output_dir} already holds a fine-tuning run (checkpoint_last.pt); pass "
                          f"resume=True to continue it, or choose another output_dir")
    saved = ckpt.load_checkpoint(last) if cfg.resume else None
    if saved is not None and saved["config"]["task"] != cfg.task:
        raise ConfigError(f"{last} is a {saved['config']['task']} run, not {cfg.task}; use another output_dir")
    return resolve_device(cfg.gpus), saved


def transfer_worker(cfg: TransferConfig, progress: bool = True, echo: bool = True) -> TransferRun:
    """One process of the job (the only one, or one rank of a distributed run)."""
    device, saved = preflight(cfg)
    owns_group = dist_.launched_by_torchrun() and not dist_.is_distributed()
    if owns_group:
        dist_.init_process_group(use_cuda=device.type == "cuda")
    rank, world = dist_.rank(), dist_.world_size()
    main = rank == 0
    out = Path(cfg.output_dir)
    schedule = cfg.schedule
    need(schedule.batch_size % world == 0,  # under torchrun the world comes from the launcher
          f"batch_size={schedule.batch_size} does not split over {world} processes; use a multiple of {world}")
    need(not (world > 1 and cfg.sync_bn and device.type != "cuda"),
          "sync_bn=True needs GPUs (SyncBatchNorm runs on CUDA only); pass sync_bn=False")

    train_set, test_set = datasets(cfg)  # a wrong layout fails before the model is built
    classes = train_set.classes
    torch.manual_seed(cfg.seed)  # the new layers start the same on every rank
    fetch = saved is None and world > 1  # rank 0 reads (or downloads) the weights first, then the others
    if fetch and not main:
        dist_.barrier()
    backbone = None if saved is not None else models.backbone_weights(cfg.weights)
    if fetch and main:
        dist_.barrier()
    model = build_model(cfg, num_classes(cfg, classes), backbone)
    if world > 1 and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys as BatchNorm2d
    model.to(device)
    optimizer = finetune.sgd(model, schedule)
    start, rows = 0, []
    if saved is not None:
        ckpt.load_state(model, saved["model"], out / "checkpoint_last.pt")
        optimizer.load_state_dict(saved["optimizer"])
        start, rows = saved["iteration"], saved["rows"]
    step_model = model
    if world > 1:  # every rank starts from rank 0's weights; gradients are averaged over the ranks
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"config": cfg.to_dict(), "schedule": dataclasses.asdict(schedule),
                "code_version": code_version(), "torch": torch.__version__, "device": str(device),
                "processes": world, "train_images": len(train_set), "test_images": len(test_set)}
        (out / "config.json").write_text(json.dumps(meta, indent=2))

    def log(line: str) -> None:
        if main:
            if echo and progress:
                print(line, flush=True)
            with open(out / "log.txt", "a") as f:  # the launcher relays this file into the notebook
                f.write(line + "\n")

    def save(iteration: int, rows: list) -> None:
        if main:
            ckpt.atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "iteration": iteration, "rows": rows, "config": cfg.to_dict(), "classes": classes},
                             out / "checkpoint_last.pt")
            write_csv(rows, out / "losses.csv")
        dist_.barrier()

    log(f"{cfg.task}: {TASKS[cfg.task]}, {len(train_set)} training images, {world} process(es) on {device}"
        + (f", resuming at iteration {start}" if start else ""))
    detection = cfg.task != "voc_segmentation"
    rows = finetune.train(step_model, finetune.detection_step if detection else finetune.segmentation_step,
                          train_set, schedule, optimizer, device=device, seed=cfg.seed, start=start, rows=rows,
                          log_every=cfg.log_every, workers=cfg.workers,
                          collate_fn=finetune.collate_detection if detection else None,
                          checkpoint=save, checkpoint_every=cfg.checkpoint_every, progress=log)
    metrics = {}
    if cfg.evaluate:
        # Per-process BN leaves each rank its own running statistics; evaluate rank 0's (the saved model).
        dist_.broadcast_buffers(model)
        tic = time.perf_counter()
        metrics = evaluate(cfg, model, test_set, device)
        log(f"evaluated {len(test_set)} test images in {time.perf_counter() - tic:.0f} s: "
            + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float)))
        if main:
            (out / "metrics.json").write_text(json.dumps(_finite(
                {"metrics": metrics, "reference": finetune.REFERENCE[_reference_key(cfg.task)],
                 "iterations": schedule.iterations, "test_images": len(test_set)}), indent=2))
    if owns_group:
        torch.distributed.destroy_process_group()
    return TransferRun(out, cfg, model.cpu(), classes, rows, metrics)


def _finite(value):
    """NaN (a class absent from the test images) as null, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _reference_key(task: str) -> str:
    return {"coco": "coco_detection"}.get(task, task)


@record  # a worker's exception reaches the launching process with its traceback
def _worker(config: dict) -> None:
    from ..launch import cpu_threads
    cfg = TransferConfig(**config)
    if cfg.gpus == 0:
        cpu_threads(cfg.world_size)
    transfer_worker(cfg, progress=False, echo=False)


def load_transfer_run(output_dir) -> TransferRun:
    """A fine-tuning run read back from output_dir (its checkpoint_last.pt and metrics.json)."""
    out = Path(output_dir)
    state = ckpt.load_checkpoint(out / "checkpoint_last.pt")
    cfg = TransferConfig(**state["config"])
    model = build_model(cfg, num_classes(cfg, state["classes"]))
    ckpt.load_state(model, state["model"], out / "checkpoint_last.pt")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"] if (out / "metrics.json").exists() else {}
    return TransferRun(out, cfg, model, state["classes"], state["rows"], metrics)
