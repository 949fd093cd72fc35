"""Data for pretraining and for the kNN monitor, one interface over three paths.

    batches = pretrain_batches(cfg, device, rank, world)
    for (x_q, x_k), y in batches.epoch(e):      # already on the device
        ...
    monitor = knn_sets(cfg, device)             # (bank batches, test batches, number of classes)

`cfg.data_path` chooses how images reach the model (`resolve_path` settles "auto"):

    cpu     torchvision's PIL pipeline in loader workers: the reference (loader.py)
    device  the split decoded once into a uint8 tensor on the device, augmented there (device.py)
    jpeg    workers read an image folder's files, the device decodes and augments them (jpeg.py)

The two fast paths are modules named in FAST_PATHS and imported when a run takes
one: a CPU run (and a reader following it) never loads the batched augmentation
or the JPEG reader. On a GPU a fast path's batches are made ahead by a thread
while the step runs (prefetch.py, cfg.prefetch): the same batches.

Every path takes the same seeded subset of images in the same epoch order;
each draws its views from (seed, epoch, position), so a resumed run continues
exactly. datasets.py loads one split of a dataset.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Iterator, NamedTuple, Protocol

import torch

from .datasets import (
    DATASETS,
    SPECS,
    DatasetError,
    DatasetSpec,
    classes_of,
    load_split,
    seeded_subset,
    spec,
    subset_indices,
)
from .loader import LoaderBatches, eval_loader, knn_datasets, pretrain_dataset

if TYPE_CHECKING:  # annotations only: the config imports the dataset table (SPECS) from here
    from ..config import Config

__all__ = [
    "DATASETS",
    "SPECS",
    "DatasetError",
    "DatasetSpec",
    "KnnSets",
    "PretrainBatches",
    "classes_of",
    "eval_loader",
    "knn_datasets",
    "knn_sets",
    "load_split",
    "pretrain_batches",
    "pretrain_dataset",
    "resolve_path",
    "run_data",
    "seeded_subset",
    "spec",
    "subset_indices",
]


class PretrainBatches(Protocol):
    """What every data path gives the training loop."""

    path: str  # "cpu", "device" or "jpeg"

    def __len__(self) -> int:
        """The number of training images (after train_subset)."""

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """This process's ((x_q, x_k), labels) batches of one epoch from step `start` on (a run resumed inside
        the epoch: the same batches the uninterrupted run took there), normalised, on the training device."""


class KnnSets(NamedTuple):
    """The kNN monitor's data: batches (images, labels) of the bank and of the test set."""

    bank: object
    test: object
    num_classes: int


def resolve_path(cfg: Config, device: torch.device) -> str:
    """The data path a run takes: cfg.data_path, with "auto" resolved for the device and data."""
    if cfg.data_path != "auto":
        return cfg.data_path
    if device.type != "cuda":
        return "cpu"  # the reference pipeline: loader workers run beside the CPU's training step
    return "jpeg" if spec(cfg.dataset).layout == "files" and cfg.image_size > 96 else "device"


# The fast paths: each a module of this package with a `batches(cfg, device, rank, world)`.
FAST_PATHS = ("device", "jpeg")


def fast_path(name: str) -> ModuleType:
    """The module of a fast path (FAST_PATHS), imported on first use."""
    return importlib.import_module(f"{__name__}.{name}")


def pretrain_batches(cfg: Config, device: torch.device, rank: int = 0, world: int = 1) -> PretrainBatches:
    """This process's pretraining batches on the path `resolve_path` picks."""
    path = resolve_path(cfg, device)
    if path in FAST_PATHS:
        batches = fast_path(path).batches(cfg, device, rank, world)
        depth = prefetch_depth(cfg, device)
        if not depth:
            return batches
        from .prefetch import Prefetched  # with the fast paths: a CPU run never loads it

        return Prefetched(batches, depth, device)
    return LoaderBatches(pretrain_dataset(cfg), cfg, device, rank, world)


def prefetch_depth(cfg: Config, device: torch.device) -> int:
    """How many batches a fast path makes ahead (cfg.prefetch, with -1 resolved for the device)."""
    if cfg.prefetch >= 0:
        return cfg.prefetch
    return 2 if torch.device(device).type == "cuda" else 0


def run_data(cfg: Config, device: torch.device, rank: int = 0, world: int = 1, monitor: bool = True):
    """(pretraining batches, kNN monitor sets or None) of one process's run, each split listed,
    fingerprinted and read once: the device path reads the train split for its batches and its kNN bank."""
    on_device = resolve_path(cfg, device) == "device"
    with fast_path("device").one_read_per_split() if on_device else contextlib.nullcontext():
        return pretrain_batches(cfg, device, rank, world), knn_sets(cfg, device) if monitor else None


def knn_sets(cfg: Config, device: torch.device) -> KnnSets:
    """The kNN monitor's bank and test set: kept on the device on the device path when the images are
    already image_size pixels (no resizing needed), else loader batches under the test transform."""
    sets = fast_path("device").knn_sets(cfg, device) if resolve_path(cfg, device) == "device" else None
    if sets is None:
        bank, test = knn_datasets(cfg)
        pin = device.type == "cuda"
        sets = (
            eval_loader(bank, workers=cfg.workers, pin_memory=pin),
            eval_loader(test, workers=cfg.workers, pin_memory=pin),
            len(classes_of(bank)),
        )
    sets = KnnSets(*sets)
    warn_if_uninformative(sets.num_classes, _images_in(sets.bank), cfg.knn_k, f"{cfg.dataset} at {cfg.data_root}")
    return sets


def _images_in(batches) -> int:
    """How many images a loader or a DeviceEvalBatches holds."""
    return len(batches.dataset) if hasattr(batches, "dataset") else len(batches.labels)


def warn_if_uninformative(num_classes: int, bank_size: int, k: int, what: str) -> None:
    """One warning when a kNN accuracy cannot mean what it seems: one class, or fewer bank images than k."""
    if num_classes < 2:
        warnings.warn(
            f"{what} has {num_classes} class: every kNN or SVM accuracy on it is 100% by construction, "
            f"so it says nothing about the features; use a labelled dataset with several classes "
            f"(train/<class>/ folders) to measure them",
            stacklevel=3,
        )
    if bank_size < k:
        warnings.warn(
            f"the kNN bank holds {bank_size} images, fewer than k={k}: every test image votes with the "
            f"whole bank (k={bank_size}); raise knn_bank_size or lower knn_k",
            stacklevel=3,
        )
