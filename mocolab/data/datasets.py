"""Datasets for pretraining and for the kNN monitor.

Supported: CIFAR-10 / CIFAR-100 and STL-10 through torchvision (downloaded into
`data_root`), and any ImageFolder root laid out as

    <root>/train/<class>/<image>      pretraining and the kNN bank
    <root>/val/<class>/<image>        (or test/) the kNN test set

(ImageNet, Imagenette, a CIFAR-10 export, your own photos). Unreadable images
in a folder are reported by path and skipped rather than crashing a long run.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .augment import TwoViews, eval_transform, normalisation, pretrain_transform
from .config import Config

DATASETS = ("cifar10", "cifar100", "stl10", "imagefolder")
_SOURCES = {
    "cifar10": ("CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "cifar100": ("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python",
                 "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "stl10": ("STL-10", "stl10_binary.tar.gz", "stl10_binary", "https://cs.stanford.edu/~acoates/stl10/"),
}


class DatasetError(RuntimeError):
    """A dataset is missing, empty, malformed or cannot be downloaded; the message says what to do."""


class SkipCorruptImageFolder(torchvision.datasets.ImageFolder):
    """ImageFolder that warns about an unreadable image (naming its path) and serves the next one."""

    max_consecutive_failures = 100

    def __getitem__(self, index: int):
        for attempt in range(self.max_consecutive_failures):
            i = (index + attempt) % len(self.samples)
            try:
                return super().__getitem__(i)
            except (OSError, ValueError, SyntaxError) as err:  # what PIL raises on a broken file
                warnings.warn(f"skipping unreadable image {self.samples[i][0]}: {err}", stacklevel=2)
        raise DatasetError(f"{self.max_consecutive_failures} consecutive unreadable images from "
                           f"{self.samples[index][0]} on in {self.root}: is the folder corrupt?")


# ----------------------------------------------------------------------------
# Loading one split
# ----------------------------------------------------------------------------

def load_split(dataset: str, root: str | Path, split: str, transform=None, download: bool = True) -> Dataset:
    """One split of a dataset with `transform` applied to its PIL images.

    split: "train" or "test" for every dataset ("test" is val/ or test/ of an
    ImageFolder root), plus "unlabeled" for STL-10.
    """
    root = Path(root)
    if dataset == "imagefolder":
        return _image_folder(root, split, transform)
    if dataset not in _SOURCES:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    name, archive, folder, url = _SOURCES[dataset]
    try:
        if dataset == "stl10":
            return torchvision.datasets.STL10(root, split=split, transform=transform, download=download)
        cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
        return cls(root, train=split == "train", transform=transform, download=download)
    except Exception as err:  # torchvision raises URLError, OSError or RuntimeError here
        how = "could not be downloaded" if download else "was not found (download=False)"
        raise DatasetError(
            f"{name} is not in {root} and {how}: {err}. Download {archive} from {url} and put it "
            f"in {root} (it is extracted on first use), or extract it so that {root / folder} exists; "
            f"or set dataset='imagefolder' and data_root to a folder with train/ and test/ "
            f"class subfolders.") from err


def _image_folder(root: Path, split: str, transform) -> Dataset:
    layout = (f"expected {root}/train/<class>/<image> and {root}/val/ (or test/) laid out the same; "
              f"set data_root to that folder")
    if not root.is_dir():
        raise DatasetError(f"data_root {root} does not exist: {layout}")
    candidates = ["train"] if split == "train" else ["val", "test"]
    folder = next((root / c for c in candidates if (root / c).is_dir()), None)
    if folder is None:
        raise DatasetError(f"no {' or '.join(c + '/' for c in candidates)} folder in {root}: {layout}")
    try:
        return SkipCorruptImageFolder(str(folder), transform=transform)
    except FileNotFoundError as err:  # no class folders, or no image files in them
        raise DatasetError(f"{folder} holds no images ({err}); {layout}") from err


def classes_of(dataset: Dataset) -> list:
    """Class names of a dataset, looking through Subset and EpochSeeded wrappers."""
    while isinstance(dataset, (Subset, EpochSeeded)):
        dataset = dataset.dataset
    return list(dataset.classes)


def subset_indices(size: int, n: int, seed: int) -> list[int]:
    """The indices seeded_subset keeps of a dataset of `size` items (all of them when n = 0 or n >= size)."""
    keep = seeded_subset(range(size), n, seed)
    return list(keep.indices) if isinstance(keep, Subset) else list(range(size))


def seeded_subset(dataset: Dataset, n: int, seed: int) -> Dataset:
    """A random subset of n items, the same for the same seed; n = 0 or n >= len: everything."""
    if n <= 0 or n >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=generator)[:n].tolist())


# ----------------------------------------------------------------------------
# What a run needs
# ----------------------------------------------------------------------------

class EpochSeeded(Dataset):
    """Makes the random augmentation of item i in epoch e a function of (seed, e, i) alone.

    So a run sees the same views whatever its number of loader workers or
    processes, and a resumed run sees the views an uninterrupted one would have.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG stream untouched
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 100_000_007 + index) % 2**63)
            return self.dataset[index]


def pretrain_dataset(cfg: Config) -> EpochSeeded:
    """Items ((x_q, x_k), label): two independent augmentations of one image."""
    split = "unlabeled" if cfg.dataset == "stl10" else "train"
    transform = TwoViews(pretrain_transform(cfg.augmentation, cfg.image_size))
    dataset = load_split(cfg.dataset, cfg.data_root, split, transform, cfg.download)
    if len(dataset) == 0:
        raise DatasetError(f"the {split} split of {cfg.dataset} in {cfg.data_root} is empty")
    return EpochSeeded(seeded_subset(dataset, cfg.train_subset, cfg.seed), cfg.seed)


def knn_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """(bank, test) for the kNN monitor: labelled train and test splits under the test transform."""
    transform = eval_transform(cfg.image_size, *normalisation(cfg.augmentation))
    bank = load_split(cfg.dataset, cfg.data_root, "train", transform, cfg.download)
    test = load_split(cfg.dataset, cfg.data_root, "test", transform, cfg.download)
    return (seeded_subset(bank, cfg.knn_bank_size, cfg.seed + 1),
            seeded_subset(test, cfg.knn_test_size, cfg.seed + 2))


def epoch_sampler(size: int, cfg: Config, epoch: int, rank: int = 0, world: int = 1) -> DistributedSampler:
    """This process's share of the epoch's permutation of `size` items: the order every data path follows."""
    sampler = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed * 100_003, drop_last=True)
    sampler.set_epoch(epoch)
    return sampler


def step_seed(cfg: Config, epoch: int, step: int, rank: int) -> int:
    """The seed of one step's augmentation draws on the device paths: a function of (seed, epoch, step, rank)."""
    return ((cfg.seed * 1_000_003 + epoch) * 100_003 + step) * 1_009 + rank


def pretrain_loader(dataset: EpochSeeded, cfg: Config, epoch: int, rank: int = 0, world: int = 1,
                    pin_memory: bool = False) -> DataLoader:
    """This process's shuffled batches (batch_size / world images) for one epoch.

    The order is a permutation drawn from (seed, epoch), dealt to the processes
    in turn (DistributedSampler), so N processes together see the batches one
    process would; the views are fixed by EpochSeeded. Both make resuming exact.
    """
    if len(dataset) < cfg.batch_size:
        raise DatasetError(f"the dataset has {len(dataset)} images, fewer than one batch of "
                           f"{cfg.batch_size}; lower batch_size (and K) or use more images")
    dataset.set_epoch(epoch)
    sampler = epoch_sampler(len(dataset), cfg, epoch, rank, world)
    return DataLoader(dataset, batch_size=cfg.batch_size // world, sampler=sampler, drop_last=True,
                      num_workers=cfg.workers, pin_memory=pin_memory, persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int = 512, workers: int = 4, pin_memory: bool = False):
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory)
