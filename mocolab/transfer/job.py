"""One transfer row as a job: fine-tune on one device or N GPUs, checkpoint, resume, evaluate.

    cfg = TransferConfig(task="voc_detection", weights="runs/in/checkpoint_last.pt",
                         data_root="/data/VOCdevkit", preset="voc_c4_24k", gpus=8,
                         output_dir="runs/voc_det")
    run = fine_tune(cfg)        # starts 8 processes (NCCL, SyncBatchNorm) and waits for them
    run.metrics["AP50"]

The protocol's runs (docs/protocols.md) use 8 GPUs, a global batch of 16 and
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
resumed run takes the steps the uninterrupted one would have. The lifecycle
(preflight, processes, output folder) is pretraining's too: mocolab.run.job.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Subset

from ..run import checkpoint as ckpt
from .. import distributed as dist_
from ..run import job
from .. import settings
from ..config import check_processes, world_size_of
from ..models import ARCHS
from ..reference import TRANSFER, transfer_reference
from ..reference import TRANSFER_METRICS as REFERENCE_METRICS
from ..settings import ConfigError, need
from . import finetune, models
from .tasks import TASKS


@dataclass(frozen=True)
class TransferConfig:
    """One transfer row. Validated like pretraining's Config; None means the preset's value."""

    task: Literal[tuple(TASKS)] = "voc_detection"  # tasks.TASKS: the reference page's three rows
    weights: str = "none"  # a checkpoint (a ResNet-50 file or published name, weights.load), "supervised" or "none"
    # with weights="none": the randomly initialised backbone; None: the reference's ResNet-50 (ImageNet stem);
    # a mocolab arch (models.ARCHS) to compare with a pretrained network of that arch from the same start
    arch: str | None = None
    cifar_stem: bool = False  # with arch: the CIFAR stem (conv1 3x3, stride 1, no max-pool)
    data_root: str = "data/VOCdevkit"  # VOCdevkit (VOC2007/, VOC2012/) or the COCO folder (train2017/, ...)
    train_sets: str = "2007/trainval,2012/trainval"  # voc_detection: year/split lists to train on
    preset: Literal[tuple(finetune.PRESETS)] = "tiny"  # finetune.PRESETS: the references' schedules, and tiny
    iterations: int | None = None  # None: the preset's
    batch_size: int | None = None  # global batch over all processes; None: the preset's (16 in the references)
    lr: float | None = None  # None: the preset's
    crop: int = 512  # voc_segmentation training crop
    model_options: dict = field(default_factory=dict)  # torchvision detector options; tiny: small images
    gpus: int = -1  # -1: one GPU if present, else the CPU; 0: CPU; N: N GPUs, one process each
    processes: int = 1  # with gpus=0: CPU processes (gloo)
    sync_bn: bool = True  # SyncBatchNorm over the processes (GPUs only), as the protocol says
    workers: int = 4  # DataLoader worker processes per process
    seed: int = 0
    train_limit: int = 0  # > 0: only the first N training images (a quick try)
    test_limit: int = 0  # > 0: only the first N test images
    log_every: int | None = None  # iterations between logged loss rows; None: about 50 rows over the run
    checkpoint_every: int = 1000  # iterations between checkpoints (and always at the end)
    evaluate: bool = True
    output_dir: str = "runs/transfer"
    resume: bool = False

    label = "transfer config"  # in error messages: "unknown transfer config key ..."

    def __post_init__(self):
        settings.check_fields(self)
        for name in ("iterations", "batch_size", "lr"):
            need(
                getattr(self, name) is None or getattr(self, name) > 0,
                f"{name} must be positive, or None for the preset's, got {getattr(self, name)}",
            )
        need(self.crop > 0, f"crop must be positive, got {self.crop}")
        need(
            self.arch is None or self.arch in ARCHS,
            f"arch={self.arch!r} is not a network mocolab builds; choose one of {list(ARCHS)}, or None",
        )
        need(
            (self.arch is None and not self.cifar_stem) or self.weights in ("", "none", "random"),
            f"arch and cifar_stem choose the network for weights='none'; weights={self.weights!r} brings its own "
            f"(read off its shapes): leave arch=None and cifar_stem=False",
        )
        need(self.log_every is None or self.log_every > 0, f"log_every must be positive or None, got {self.log_every}")
        for name in ("workers", "seed", "train_limit", "test_limit", "checkpoint_every"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        check_processes(self.gpus, self.processes)
        need(
            self.schedule.batch_size % self.world_size == 0,
            f"batch_size={self.schedule.batch_size} does not split over {self.world_size} processes; "
            f"use a multiple of {self.world_size}",
        )
        need(
            not (self.sync_bn and self.gpus == 0 and self.processes > 1),
            "sync_bn=True needs GPUs (SyncBatchNorm runs on CUDA only); pass sync_bn=False to fine-tune "
            "with per-process BN on CPU processes",
        )

    @property
    def world_size(self) -> int:
        return world_size_of(self.gpus, self.processes)

    @property
    def log_interval(self) -> int:
        return self.log_every or max(1, self.schedule.iterations // 50)

    @property
    def schedule(self) -> finetune.Schedule:
        s = finetune.PRESETS[self.preset]
        return dataclasses.replace(
            s,
            iterations=self.iterations or s.iterations,
            batch_size=self.batch_size or s.batch_size,
            lr=self.lr or s.lr,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_transfer_config(**overrides) -> TransferConfig:
    """TransferConfig with `overrides`; None keeps the default; an unknown key is named."""
    return settings.build(TransferConfig, {}, overrides)


def transfer_config_from_dict(values: dict) -> TransferConfig:
    """Rebuild a saved TransferConfig (a checkpoint's "config"); a key this version does not know is named."""
    return settings.from_dict(TransferConfig, values)


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
    train, test = TASKS[cfg.task].datasets(cfg)
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


def build_model(
    cfg: TransferConfig, num_classes: int, backbone: dict | None = None, arch: tuple[str, bool] | None = None
) -> torch.nn.Module:
    """The task's reference model (models.py) on the backbone's ResNet (arch: (name, cifar_stem) when there are
    no weights to read it from; None: the weights', else ResNet-50); the tiny preset shrinks the image sizes."""
    options = cfg.model_options or (finetune.TINY_MODEL_OPTIONS if cfg.preset == "tiny" else {})
    return TASKS[cfg.task].build(num_classes, backbone, arch=arch, **options)


# ----------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------


def fine_tune(cfg: TransferConfig, progress: bool = True) -> TransferRun:
    """Fine-tune and evaluate as `cfg` says, writing everything to cfg.output_dir (see the module doc).

    With gpus > 1 (or gpus=0 and processes > 1) this starts the processes, as pretraining does, and
    returns the run read back from its checkpoint.
    """
    return job.run(cfg, transfer_worker, preflight, load_transfer_run, progress)


def preflight(cfg: TransferConfig) -> job.Checked:
    """What can fail before any process starts: the output directory, the checkpoint, the device."""
    checked = job.open_run(cfg, "fine-tuning")
    if checked.saved is not None and checked.saved["config"]["task"] != cfg.task:
        raise ConfigError(
            f"{Path(cfg.output_dir) / 'checkpoint_last.pt'} is a {checked.saved['config']['task']} "
            f"run, not {cfg.task}; use another output_dir"
        )
    return checked


def transfer_worker(
    cfg: TransferConfig, progress: bool = True, echo: bool = True, checked: job.Checked | None = None
) -> TransferRun:
    """One process of the job (the only one, or one rank of a distributed run); checked: its preflight."""
    _, device, saved, _ = checked if checked is not None else preflight(cfg)
    with job.process_group(device) as (rank, world):
        main = rank == 0
        folder = job.RunFolder(cfg.output_dir, main, echo and progress)
        folder.remove_stale_temporaries()
        schedule = cfg.schedule
        need(
            schedule.batch_size % world == 0,  # under torchrun the world comes from the launcher
            f"batch_size={schedule.batch_size} does not split over {world} processes; use a multiple of {world}",
        )
        need(
            not (world > 1 and cfg.sync_bn and device.type != "cuda"),
            "sync_bn=True needs GPUs (SyncBatchNorm runs on CUDA only); pass sync_bn=False",
        )

        train_set, test_set = datasets(cfg)  # a wrong layout fails before the model is built
        classes = train_set.classes
        task = TASKS[cfg.task]
        model, step_model, arch = _model(cfg, saved, classes, device, world)
        optimizer = finetune.sgd(model, schedule)
        start, rows = 0, []
        if saved is not None:
            ckpt.load_state(model, saved["model"], folder.path / "checkpoint_last.pt")
            optimizer.load_state_dict(saved["optimizer"])
            start, rows = saved["iteration"], saved["rows"]
        folder.write_config(
            cfg,
            device,
            world,
            schedule=dataclasses.asdict(schedule),
            train_images=len(train_set),
            test_images=len(test_set),
        )

        def save(iteration: int, rows: list) -> None:
            folder.save(
                {
                    "kind": "fine-tuning",
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "iteration": iteration,
                    "rows": rows,
                    "config": cfg.to_dict(),
                    "classes": classes,
                    "backbone_arch": list(arch),  # (name, cifar_stem): what a resumed run or load_run builds
                }
            )
            folder.write_csv(rows, "losses.csv")
            dist_.barrier()

        folder.log(
            f"{cfg.task}: {task.model_name}, {len(train_set)} training images, {world} process(es) on "
            f"{device}" + (f", resuming at iteration {start}" if start else "")
        )
        rows = finetune.train(
            step_model,
            task.step,
            train_set,
            schedule,
            optimizer,
            device=device,
            seed=cfg.seed,
            start=start,
            rows=rows,
            log_every=cfg.log_interval,
            workers=cfg.workers,
            collate_fn=task.collate,
            checkpoint=save,
            checkpoint_every=cfg.checkpoint_every,
            progress=folder.log,
        )
        metrics = _evaluate(cfg, model, test_set, device, folder) if cfg.evaluate else {}
    return TransferRun(folder.path, cfg, model.cpu(), classes, rows, metrics)


def _model(cfg: TransferConfig, saved, classes, device, world):
    """(the model, what a step calls: the model or DDP around it, the backbone's (arch, cifar_stem)), with the
    backbone's weights; a resumed run builds the saved arch and loads the saved state over it."""
    torch.manual_seed(cfg.seed)  # the new layers start the same on every rank
    fetch = saved is None and world > 1  # rank 0 reads (or downloads) the weights first, then the others
    if fetch and dist_.rank() != 0:
        dist_.barrier()
    backbone = None if saved is not None else models.backbone_weights(cfg.weights)
    if fetch and dist_.rank() == 0:
        dist_.barrier()
    if saved is not None:
        arch = tuple(saved["backbone_arch"])
    elif backbone is None and cfg.arch is not None:
        arch = (cfg.arch, cfg.cifar_stem)
    else:
        arch = models.backbone_arch(backbone)
    model = build_model(cfg, TASKS[cfg.task].num_classes(classes), backbone, arch)
    if world > 1 and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys as BatchNorm2d
    model.to(device)
    if world == 1:
        return model, model, arch
    # Every rank starts from rank 0's weights (DDP broadcasts them); gradients are averaged over the ranks.
    return (
        model,
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None),
        arch,
    )


def _evaluate(cfg: TransferConfig, model, test_set, device, folder: job.RunFolder) -> dict:
    """The task's metrics on the test set (split over the processes), into metrics.json beside the reference."""
    # Per-process BN leaves each rank its own running statistics; evaluate rank 0's (the saved model).
    dist_.broadcast_buffers(model)
    tic = time.perf_counter()
    metrics = TASKS[cfg.task].evaluate(model, test_set, device=device)
    folder.log(
        f"evaluated {len(test_set)} test images in {time.perf_counter() - tic:.0f} s: "
        + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
    )
    if folder.main:
        (folder.path / "metrics.json").write_text(
            json.dumps(
                _finite(
                    {
                        "metrics": metrics,
                        "reference": TRANSFER[cfg.task],
                        "iterations": cfg.schedule.iterations,
                        "test_images": len(test_set),
                    }
                ),
                indent=2,
            )
        )
    return metrics


def _finite(value):
    """NaN (a class absent from the test images) as null, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def load_transfer_run(output_dir) -> TransferRun:
    """A fine-tuning run read back from output_dir (its checkpoint_last.pt and metrics.json)."""
    out = Path(output_dir)
    state = ckpt.load_checkpoint(out / "checkpoint_last.pt")
    if ckpt.kind_of(state) != "fine-tuning":
        raise ckpt.CheckpointError(
            f"{out / 'checkpoint_last.pt'} is not a fine-tuning checkpoint ({ckpt.kind_of(state) or 'unknown kind'})"
        )
    cfg = transfer_config_from_dict(state["config"])
    model = build_model(cfg, TASKS[cfg.task].num_classes(state["classes"]), arch=tuple(state["backbone_arch"]))
    ckpt.load_state(model, state["model"], out / "checkpoint_last.pt")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"] if (out / "metrics.json").exists() else {}
    return TransferRun(out, cfg, model, state["classes"], state["rows"], metrics)


def metrics_table(run: TransferRun) -> str:
    """The row's metrics beside the reference numbers, as a markdown table."""
    lines = ["| metric | measured | reference (8 GPUs, 200-epoch MoCo v2) |", "|---|---|---|"]
    for name in REFERENCE_METRICS[run.config.task]:
        value = run.metrics.get(name)
        shown = f"{value:.2f}" if isinstance(value, float) else "-"
        lines.append(f"| {name} | {shown} | {transfer_reference(run.config.task, name)} |")
    return "\n".join(lines)


def predict_examples(run: TransferRun, n: int = 4, device=None) -> tuple[list, list, list]:
    """(images, predictions, ground truths) of the first n test images of the run's task: detections
    (boxes, labels, scores) or per-pixel classes, on the CPU, for plotting."""
    device = device or ("cuda" if torch.cuda.is_available() and run.config.gpus != 0 else "cpu")
    _, test_set = datasets(run.config)
    examples = [test_set[i] for i in range(min(n, len(test_set)))]
    predictions = [TASKS[run.config.task].predict(run.model, image, device) for image, _ in examples]
    return [image for image, _ in examples], predictions, [truth for _, truth in examples]
