"""One frozen configuration for a MoCo pretraining run, and its presets.

The field defaults are the official CIFAR-10 demo recipe (docs/protocols.md section 1,
"CIFAR-10 demo recipe"); the `imagenet_mocov2` preset lists every field in which
the ImageNet recipe (resnet50_8xb32-coslr-200e) differs. One recipe lives in one
place: to see what a run used, read its `config.json`.

    cfg = make_config("cifar10_demo", epochs=20, gpus=0)

An unknown key, a value of the wrong type or an impossible combination (K not
divisible by the batch, ...) raises `ConfigError` naming the key, before any
work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import settings
from .augment import RECIPES
from .data.datasets import DATASETS
from .run import preemption
from .run.device import visible_gpus
from .models import ARCHS
from .settings import ConfigError, need

__all__ = [
    "EXECUTION_FIELDS",
    "MODEL_FIELDS",
    "PRESETS",
    "Config",
    "ConfigError",
    "make_config",
    "config_from_dict",
    "need",
]


# Every field has one of three roles, marked where the field is declared so that a new field cannot be forgotten:
#   model      defines the shapes of the saved tensors: a resumed checkpoint must match it (checkpoint.py)
#   execution  says where or how a run executes, not what it computes: two configs that differ only in these
#              fields compute the same run (the sweeps' folder check and run sharing)
#   recipe     (unmarked) everything else: what the run computes
def model(default):
    """A field that defines the model's tensors (role "model")."""
    return dataclasses.field(default=default, metadata={"role": "model"})


def execution(default):
    """A field that says where or how a run executes, not what it computes (role "execution")."""
    return dataclasses.field(default=default, metadata={"role": "execution"})


@dataclass(frozen=True)
class Config:
    # --- data ---------------------------------------------------------------
    dataset: Literal[DATASETS] = "cifar10"  # data.SPECS: CIFAR-10/100, STL-10, an image folder
    data_root: str = execution("data")  # torchvision downloads land here; imagefolder: the folder holding train/
    download: bool = execution(True)  # let torchvision fetch CIFAR / STL-10 when missing
    train_subset: int = 0  # pretrain on a seeded random subset of this many images; 0: all
    workers: int = execution(4)  # DataLoader worker processes; 0 loads in the main process
    # cpu: torchvision transforms in loader workers (the reference); device: images decoded once into
    # a uint8 tensor on the training device, augmented there in batches (small datasets of one size);
    # jpeg: workers read the files of an image folder, the device decodes and augments them;
    # auto: cpu on the CPU; on a GPU, jpeg for image folders at image_size > 96, else device
    data_path: Literal["auto", "cpu", "device", "jpeg"] = execution("auto")

    # --- encoder ------------------------------------------------------------
    arch: Literal[ARCHS] = model("resnet18")  # resnet10_w16, ...: narrow ResNets, the CPU teaching approximation
    cifar_stem: bool = model(True)  # conv1 3x3 stride 1 and no max-pool, for 32 px images
    head: Literal["linear", "mlp"] = model("linear")  # demo: Linear 512->128; v2: Linear-ReLU-Linear
    dim: int = model(128)  # dimension of q and k

    # --- MoCo ---------------------------------------------------------------
    K: int = model(4096)  # queue size: number of negative keys
    m: float = 0.99  # momentum of the key encoder: k = m*k + (1-m)*q
    T: float = 0.1  # softmax temperature of the InfoNCE logits
    symmetric: bool = False  # both crops serve as query (two losses, summed), as in the demo
    shuffle_bn: bool = True  # shuffle the key batch so BN statistics cannot leak the positive
    bn_splits: int = 8  # BN groups in the global batch: split BN simulates 8 GPUs on one; 1: plain BN

    # --- augmentation -------------------------------------------------------
    augmentation: Literal[tuple(RECIPES)] = "cifar"  # augment.RECIPES: the demo's, MoCo v2's, MoCo v1's
    image_size: int = 32  # side of the random resized crop, pixels

    # --- optimisation -------------------------------------------------------
    epochs: int = 200
    batch_size: int = 512  # global batch: images per step over all processes (each gets batch_size / N)
    lr: float = 0.06  # for this global batch; linear scaling rule: lr = 0.03 * batch_size / 256 (ImageNet)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4
    lr_schedule: Literal["cosine_epoch", "cosine_step"] = "cosine_epoch"  # official code: per epoch
    warmup_epochs: int = 0  # linear warm-up from 0 before the cosine decay
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    steps_per_epoch: int = 0  # cap on steps per epoch, for demos and tests; 0: the whole dataset
    stop_after: int = execution(0)  # > 0: stop after this many epochs of `epochs`' schedule (resume=True goes on)

    # --- hardware -----------------------------------------------------------
    gpus: int = execution(-1)  # -1: one GPU if present, else the CPU; 0: CPU; N: N GPUs, one process each (NCCL)
    processes: int = 1  # with gpus=0: CPU processes (gloo), to try the distributed path on a laptop
    sync_bn: bool = False  # SyncBatchNorm over all GPUs instead of shuffle BN's per-GPU statistics (ablation)
    channels_last: bool = execution(False)  # NHWC memory layout: faster convolutions under bf16 on recent GPUs
    # torch.compile (minutes of warm-up) of: True, both encoders; "model", the whole MoCo forward as one graph
    # (momentum update, shuffle BN, both encoders, InfoNCE, enqueue) and its backward; "graphs", that graph
    # replayed as CUDA graphs (mode="reduce-overhead", GPU only), without launching its ~1,000 kernels one by one.
    # "model" and "graphs" run in one process. Any of them also compiles the augmentation of a view batch on a
    # GPU's device and jpeg paths (its ~480 operations fused into 5-8 kernels; augment.batched.compiled)
    compile: bool | Literal["model", "graphs"] = execution(False)
    # device and jpeg paths: batches made this many steps ahead by a thread (on a GPU, on its own CUDA stream),
    # so the next batch's decoding and augmentation overlap the step (data.prefetch); the same batches bit for
    # bit. -1: 2 on a GPU, 0 on the CPU, where the thread would take the step's cores
    prefetch: int = execution(-1)

    # --- kNN monitor (the demo's: k=200, T=0.1 on the head output) ----------
    knn_every: int = 1  # epochs between kNN passes; 0: never
    knn_k: int = 200
    knn_t: float = 0.1
    knn_feature: Literal["head", "avgpool"] = "head"  # 128-d head output, or the backbone's global average pool
    knn_bank_size: int = 0  # seeded subset of the train split used as the bank; 0: all
    knn_test_size: int = 0  # seeded subset of the test split; 0: all
    # read an epoch's kNN (and probe) in a thread while the next epoch trains, from a copy of its weights (the
    # same readings; background_monitor.py). -1: on a GPU when the kNN sets are held there; 0: in line; 1: always
    knn_background: int = execution(-1)
    # a linear head on the detached pooled features of each step's query view, trained on the labels beside
    # MoCo and read on the kNN test set (metrics.csv's probe_top1; mocolab.online_probe); changes no MoCo weight
    online_probe: bool = False

    # --- run ----------------------------------------------------------------
    output_dir: str = execution("runs/moco")  # config.json, metrics.csv, checkpoints, TensorBoard logs
    checkpoint_every: int = execution(10)  # epochs between kept checkpoints (checkpoint_last.pt is every epoch)
    # > 0: checkpoint_last.pt also every this many steps inside an epoch, with the position (long epochs)
    checkpoint_every_steps: int = execution(0)
    # signals after which a run finishes its step, saves its position in the epoch and exits 75, "requeue"
    # (a scheduler's preemption notice; mocolab.run.preemption); "": none
    stop_signals: str = execution("SIGTERM,SIGUSR1")
    log_every: int = execution(10)  # steps between progress/TensorBoard updates (each forces a GPU sync)
    seed: int = 0
    resume: bool = execution(False)  # continue from output_dir/checkpoint_last.pt
    preset: str = execution("cifar10_demo")  # recorded for reference; set by make_config

    label = "config"  # in error messages: "unknown config key ..."

    def __post_init__(self):
        settings.check_fields(self)
        for name in ("output_dir", "data_root"):  # "~/runs" from a command line: the shell left the ~ to us
            object.__setattr__(self, name, os.path.expanduser(getattr(self, name)))
        _check_values(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def world_size(self) -> int:
        """Processes of a run launched from Python: one per GPU, or `processes` on the CPU.

        Under torchrun the launcher decides, and this is not used.
        """
        return world_size_of(self.gpus, self.processes)

    @property
    def final_epoch(self) -> int:
        """The epoch this run stops after: stop_after when it cuts the schedule short, else epochs."""
        return min(self.stop_after, self.epochs) if self.stop_after else self.epochs

    @property
    def views_per_step(self) -> int:
        """Keys enqueued per image: 2 with the symmetric loss (both crops give keys)."""
        return 2 if self.symmetric else 1


def fields_of_role(role: str) -> tuple[str, ...]:
    """The Config fields of one role ("model", "execution" or "recipe"), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("role", "recipe") == role)


MODEL_FIELDS = fields_of_role("model")
EXECUTION_FIELDS = fields_of_role("execution")


# Every field in which the ImageNet recipe differs from the demo defaults
# (docs/protocols.md section 1, "ImageNet recipe").
PRESETS: dict[str, dict] = {
    "cifar10_demo": {},
    "imagenet_mocov2": dict(
        dataset="imagefolder",
        data_root="data/imagenet",
        arch="resnet50",
        cifar_stem=False,
        head="mlp",
        K=65536,
        m=0.999,
        T=0.2,
        bn_splits=8,  # 256 = 8 GPUs x 32 in the paper; on one device, 8 BN splits
        augmentation="aug_plus",
        image_size=224,
        epochs=200,
        batch_size=256,
        lr=0.03,
        weight_decay=1e-4,
        knn_every=10,
        knn_t=0.07,  # the kNN protocol's T for ImageNet (k=200: 52.5 for MoCo v2 200 ep)
        knn_feature="avgpool",
        workers=16,
    ),
    # The CPU teaching recipe: MoCo v2 exactly (two views, momentum encoder, queue, InfoNCE, split BN with
    # shuffling), with a narrow ResNet-10 and a schedule sized to learn visibly in ~5 minutes on a 2-core
    # CPU. A teaching approximation, not a published recipe (benchmarks/cpu_recipe_sweep.py; docs/protocols.md).
    "cifar10_cpu": dict(
        arch="resnet10_w16",  # one BasicBlock per stage, widths 16-128: ~600 images/s on 2 CPU cores
        batch_size=256,
        lr=0.06,
        epochs=3,
        data_path="device",  # augmented in batches in the training process: no loader workers competing
        knn_feature="avgpool",  # the kNN protocol's feature; it shows the gain more clearly than the head
        knn_bank_size=5000,
        knn_test_size=2000,
    ),
    # The CIFAR-10 demo recipe unchanged but for its length, sized for a workshop hour on one GPU.
    "cifar10_workshop": dict(epochs=60),
    # The smallest real run, for tests and smoke checks: the demo recipe's model and loss on 64 images at 16 px,
    # a queue of 4 batches, 2 epochs with a kNN pass on 64 / 32 images: seconds on a CPU. It learns nothing.
    "tiny": dict(
        image_size=16,
        batch_size=16,
        K=64,
        bn_splits=2,
        train_subset=64,
        epochs=2,
        lr=0.01,
        knn_bank_size=64,
        knn_test_size=32,
        knn_k=10,
        log_every=2,
        workers=0,
    ),
}
AUTO = "auto"  # the preset for the machine at hand: cifar10_cpu without a GPU, cifar10_workshop with one


def resolve_preset(preset: str, gpus: int = -1) -> tuple[str, str]:
    """(preset name, why): "auto" becomes cifar10_cpu or cifar10_workshop for this machine and `gpus`."""
    if preset != AUTO:
        return preset, "as asked"
    visible = visible_gpus()
    if gpus != 0 and visible:
        return "cifar10_workshop", (
            f"{visible} GPU(s) visible: the CIFAR-10 demo recipe (ResNet-18, batch 512, "
            f"K 4096) for {PRESETS['cifar10_workshop']['epochs']} epochs"
        )
    why = "gpus=0 asks for the CPU although a GPU is visible" if visible else "no GPU visible"
    return "cifar10_cpu", (
        f"{why}: the CPU teaching recipe (a narrow ResNet-10, {PRESETS['cifar10_cpu']['epochs']} "
        f"epochs of all CIFAR-10 images), which learns visibly in about five minutes"
    )


def make_config(preset: str = "cifar10_demo", **overrides) -> Config:
    """The preset's recipe with `overrides` applied ("auto": see resolve_preset).

    An override of None keeps the preset's value (so a notebook parameter can
    say "preset default" with None); any other value is validated.
    """
    preset, _ = resolve_preset(preset, overrides.get("gpus") if overrides.get("gpus") is not None else -1)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS) + [AUTO]}")
    return settings.build(Config, {**PRESETS[preset], "preset": preset}, overrides)


def config_from_file(path, **overrides) -> Config:
    """The Config a JSON file holds, with `overrides` applied: a run's config.json (under its "config" key) or
    a bare `Config.to_dict()`, such as a sweep writes for each run it starts. Exact: a JSON number reads back as
    the float it was written from."""
    values = json.loads(Path(path).read_text())
    values = values.get("config", values) if isinstance(values, dict) else values
    if not isinstance(values, dict):
        raise ConfigError(f"{path} holds no config (a JSON object of config fields, or a run's config.json)")
    return settings.build(Config, config_from_dict(values).to_dict(), overrides)


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config saved by `Config.to_dict` (in config.json or a checkpoint); a key this version
    does not know is named (settings.from_dict)."""
    return settings.from_dict(Config, values)


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------


def world_size_of(gpus: int, processes: int) -> int:
    """Processes of a run launched from Python: one per GPU (gpus > 1), `processes` on the CPU (gpus = 0)."""
    return gpus if gpus > 1 else (processes if gpus == 0 else 1)


def check_processes(gpus: int, processes: int) -> None:
    """The gpus / processes pair of a pretraining or fine-tuning config."""
    need(gpus >= -1, f"gpus must be -1 (auto), 0 (CPU) or a GPU count, got {gpus}")
    need(processes >= 1, f"processes must be >= 1, got {processes}")
    need(
        processes == 1 or gpus == 0,
        f"processes={processes} is for CPU runs (gpus=0); on GPUs set gpus to the number of GPUs",
    )


def _check_values(cfg: Config) -> None:
    for name in ("dim", "K", "epochs", "batch_size", "image_size", "bn_splits", "knn_k", "log_every"):
        need(getattr(cfg, name) > 0, f"{name} must be positive, got {getattr(cfg, name)}")
    for name in (
        "train_subset",
        "workers",
        "warmup_epochs",
        "steps_per_epoch",
        "knn_every",
        "knn_bank_size",
        "knn_test_size",
        "checkpoint_every",
        "checkpoint_every_steps",
        "seed",
        "stop_after",
    ):
        need(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}")
    for f in dataclasses.fields(cfg):  # 1e400 parses as inf: T=inf trains to "acc 100%", lr=inf to NaN
        value = getattr(cfg, f.name)
        need(not isinstance(value, float) or math.isfinite(value), f"{f.name} must be a finite number, got {value}")
    try:
        preemption.signal_names(cfg.stop_signals)
    except ValueError as err:
        raise ConfigError(f"stop_signals={cfg.stop_signals!r}: {err}") from None
    need(0.0 <= cfg.m <= 1.0, f"m must lie in [0, 1], got {cfg.m}")
    need(cfg.T > 0 and cfg.knn_t > 0, f"temperatures must be positive, got T={cfg.T}, knn_t={cfg.knn_t}")
    need(cfg.lr > 0, f"lr must be positive, got {cfg.lr}")
    need(
        cfg.warmup_epochs < cfg.epochs or cfg.warmup_epochs == 0,
        f"warmup_epochs={cfg.warmup_epochs} must be shorter than epochs={cfg.epochs}",
    )
    keys_per_step = cfg.batch_size * cfg.views_per_step
    need(
        cfg.K % keys_per_step == 0,
        f"K={cfg.K} must be divisible by the keys enqueued per step ({keys_per_step} = batch_size "
        f"{cfg.batch_size}{' x 2 views (symmetric)' if cfg.symmetric else ''}), so the queue "
        f"pointer always wraps to 0; e.g. K={max(1, cfg.K // keys_per_step) * keys_per_step}",
    )
    need(
        cfg.batch_size % cfg.bn_splits == 0,
        f"batch_size={cfg.batch_size} must be divisible by bn_splits={cfg.bn_splits}",
    )
    need(
        not cfg.online_probe or cfg.knn_every > 0,
        "online_probe=True is read on the kNN monitor's test images, but knn_every=0 turns the monitor off; "
        "set knn_every (e.g. 1), or online_probe=False",
    )
    need(cfg.knn_background in (-1, 0, 1), f"knn_background must be -1 (auto), 0 or 1, got {cfg.knn_background}")
    need(cfg.prefetch >= -1, f"prefetch must be -1 (auto), 0 (none) or a number of batches, got {cfg.prefetch}")
    check_processes(cfg.gpus, cfg.processes)
    check_world(cfg, cfg.world_size)
    need(
        not (cfg.preset == "cifar10_cpu" and cfg.gpus > 0),
        f"preset cifar10_cpu is the CPU teaching recipe, but gpus={cfg.gpus}: on GPUs choose one of "
        f"{[p for p in PRESETS if p != 'cifar10_cpu']} (or preset='auto'), or set gpus=0",
    )


def check_world(cfg: Config, world: int) -> None:
    """batch_size is the global batch and bn_splits the BN groups in it: both split over processes; the whole
    step compiles in one process."""
    if cfg.compile in ("model", "graphs") and world > 1:
        raise ConfigError(
            f"compile={cfg.compile!r} compiles the whole step, which in {world} processes holds their collectives "
            f"(shuffle BN, the keys' all-gather) and DDP's; use compile=True (the encoders) or one process"
        )
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by the {world} processes")
    if not cfg.sync_bn and cfg.bn_splits % world:
        raise ConfigError(
            f"bn_splits={cfg.bn_splits} (BN groups in the global batch) must be a multiple of "
            f"the {world} processes; e.g. bn_splits={world} for one BN group per GPU"
        )
