"""The fast data path: images decoded once, kept on the training device, augmented there in batches.

For small datasets of one image size (CIFAR-10/100, STL-10, an ImageFolder of
32 px JPEGs): the images are decoded once into a uint8 tensor cached on disk
($MOCOLAB_CACHE, by default ~/.cache/mocolab; 180 MB for CIFAR-10), loaded to the GPU, and every step gathers,
augments (augment.batched) and normalises its batch there, with no loader workers.

What a run sees is the reference path's, drawn differently: the same images
(the same seeded subset), the same order (loader.epoch_order), views from the
same distributions. The random draws of step s in epoch e come from a
generator seeded by (seed, epoch, step, rank), so a resumed run continues
exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..run import seeding
from ..augment import batched, recipe
from ..run import cache_file
from ..run import unreadable
from .datasets import DatasetError, check_unreadable_share, classes_of, load_split, spec, subset_indices
from .fingerprint import files_digest
from .loader import check_enough_images, epoch_indices, pretrain_split

if TYPE_CHECKING:  # annotations only: the config imports the dataset table (SPECS) from here
    from ..config import Config


def cache_folder() -> Path:
    """$MOCOLAB_CACHE, else $XDG_CACHE_HOME/mocolab, else ~/.cache/mocolab (never the dataset's folder,
    which may be read-only or shared)."""
    if os.environ.get("MOCOLAB_CACHE"):
        return Path(os.environ["MOCOLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mocolab"


# ----------------------------------------------------------------------------
# Decoding once, to a uint8 tensor cache
# ----------------------------------------------------------------------------


def decode_split(ds, dataset: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(images N x 3 x H x W uint8, labels N long, {unreadable path: reason}) of one split of `dataset`
    (load_split's, without a transform), decoded in full."""
    about = spec(dataset)
    if about.layout != "files":
        return (*about.arrays(ds), {})
    first, images, labels, bad = None, [], [], {}
    for path, label in ds.samples:
        try:
            array = np.array(unreadable.open_rgb(path))
        except (OSError, ValueError, SyntaxError) as err:  # an empty, truncated or foreign file; a bomb
            bad[path] = unreadable.reason(path, err)
            unreadable.report(path, bad[path])
            continue
        if first is None:
            first = (path, array.shape)
        elif array.shape != first[1]:
            raise DatasetError(
                f"{path} is {array.shape[1]}x{array.shape[0]} px but {first[0]} is "
                f"{first[1][1]}x{first[1][0]}: the device data path holds images of one "
                f"size; use data_path='cpu' for this folder"
            )
        images.append(torch.from_numpy(array).permute(2, 0, 1))
        labels.append(label)
    check_unreadable_share(list(bad), len(ds.samples), ds.root)
    if not images:
        raise DatasetError(f"no readable image in {ds.root}")
    return torch.stack(images), torch.as_tensor(labels), bad


_run_splits: dict | None = None  # while one_read_per_split() is open: what _read_split read, by its arguments


@contextlib.contextmanager
def one_read_per_split():
    """Within this block (one run's data set-up), each split is listed, fingerprinted and loaded once:
    the device path reads the train split for its batches and again for the kNN bank and its classes.
    Outside it every call looks again, so that a file changed between two runs is seen."""
    global _run_splits
    outer = _run_splits
    _run_splits = {} if outer is None else outer
    try:
        yield
    finally:
        _run_splits = outer


def cached_split(dataset: str, root, split: str, download: bool = True, cache_dir=None):
    """decode_split, cached in cache_dir (default: cache_folder()) under a key of the dataset, its
    absolute root, the split and a fingerprint of its images and labels (data.fingerprint).

    The cache also keeps the files decoding skipped: a run that reads the cache
    reports (and records) them as the run that built it did.
    """
    images, labels, _ = _read_split(dataset, root, split, download, cache_dir)
    return images, labels


def _read_split(dataset: str, root, split: str, download: bool, cache_dir=None):
    """(images, labels, the split's dataset object) through the cache; once per one_read_per_split block."""
    root = Path(root)
    where = str(root.resolve())
    seen = (dataset, where, split, download, str(cache_dir))
    if _run_splits is not None and seen in _run_splits:
        return _run_splits[seen]
    ds = load_split(dataset, root, split, transform=None, download=download)
    key = {"dataset": dataset, "root": where, "split": split, "files": files_digest(ds)}
    path = Path(cache_dir or cache_folder()) / (
        hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".pt"
    )
    stored = cache_file.load(path, key)  # None when absent, or damaged (then it warns)
    if stored is not None:
        for bad, reason in stored.get("unreadable", {}).items():
            unreadable.report(bad, reason)
        images, labels = stored["images"], stored["labels"]
    else:
        images, labels, bad = decode_split(ds, dataset)
        cache_file.save(path, key, {"images": images, "labels": labels, "unreadable": bad})
    if _run_splits is not None:
        _run_splits[seen] = (images, labels, ds)
    return images, labels, ds


# ----------------------------------------------------------------------------
# Batches of a run
# ----------------------------------------------------------------------------


class DeviceBatches:
    """The pretraining batches of one process, augmented on the device: ((x_q, x_k), labels) per step.

    The same images and order as the reference path (loader.LoaderBatches), two
    independent views of each image.
    """

    path = "device"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg: Config, rank: int = 0, world: int = 1):
        check_enough_images(len(images), cfg)
        self.images, self.labels, self.cfg = images, labels, cfg  # images: N x 3 x H x W uint8, on the device
        self.rank, self.world = rank, world
        self.recipe = recipe(cfg.augmentation, cfg.image_size)
        self.compiled = batched.compiles(cfg.compile, images.device)

    def __len__(self) -> int:
        return len(self.images)

    def epoch(self, epoch: int, start: int = 0):
        cfg, per_rank = self.cfg, self.cfg.batch_size // self.world
        order = torch.as_tensor(
            epoch_indices(len(self.images), cfg, epoch, self.rank, self.world, start), device=self.images.device
        )
        for step in range(start, start + len(order) // per_rank):
            idx = order[(step - start) * per_rank : (step - start + 1) * per_rank]
            generator = seeding.generator(cfg.seed, "device views", epoch, step, self.rank, device=self.images.device)
            x = self.images[idx]
            yield (tuple(batched.augment(x, self.recipe, generator, self.compiled) for _ in range(2)), self.labels[idx])


def batches(cfg: Config, device, rank: int = 0, world: int = 1) -> DeviceBatches:
    """The training split (its seeded subset, as the reference path's) as DeviceBatches on `device`."""
    split = pretrain_split(cfg)
    images, labels = cached_split(cfg.dataset, cfg.data_root, split, cfg.download)
    if len(images) == 0:
        raise DatasetError(f"the {split} split of {cfg.dataset} in {cfg.data_root} is empty")
    idx = torch.as_tensor(subset_indices(len(images), cfg.train_subset, cfg.seed, "train subset"))
    return DeviceBatches(images[idx].to(device), labels[idx].to(device), cfg, rank, world)


class DeviceEvalBatches:
    """(normalised images, labels) batches of a split held on the device, for the kNN monitor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, batch_size: int = 1024):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.mean, self.std = mean, std

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            x = self.images[start : start + self.batch_size].float() / 255
            yield batched.normalize(x, self.mean, self.std), self.labels[start : start + self.batch_size]


def knn_sets(cfg: Config, device, batch_size: int = 1024):
    """(bank, test, classes) batches for the kNN monitor on the device, or None when the images
    are not already image_size pixels (the eval transform would resize; the CPU loaders do that)."""
    r = recipe(cfg.augmentation)
    sets = []
    classes = None
    for split, n, name in (("train", cfg.knn_bank_size, "knn bank"), ("test", cfg.knn_test_size, "knn test")):
        images, labels, ds = _read_split(cfg.dataset, cfg.data_root, split, cfg.download)
        if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
            return None
        classes = classes_of(ds) if classes is None else classes  # the train split's
        idx = torch.as_tensor(subset_indices(len(images), n, cfg.seed, name))  # the reference path's subsets
        sets.append(DeviceEvalBatches(images[idx].to(device), labels[idx].to(device), r.mean, r.std, batch_size))
    return sets[0], sets[1], len(classes)
