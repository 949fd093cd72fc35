"""The reference data path ("cpu"): torchvision's PIL pipeline in DataLoader worker processes.

Every path shares this module's epoch order: a permutation of the images drawn
from (seed, epoch), dealt to the processes in turn (DistributedSampler), so N
processes together see the batches one process would. Here the two views of
image i in epoch e are drawn from (seed, epoch, i) alone (`EpochSeeded`), so a
run sees the same views whatever its number of loader workers or processes,
and a resumed run the views an uninterrupted one would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..run import seeding
from ..run.workers import loader_processes
from ..augment import TwoViews, eval_transform, pretrain_transform, recipe
from .datasets import DatasetError, check_signatures, load_split, seeded_subset, spec

if TYPE_CHECKING:  # annotations only: the config imports the dataset table (SPECS) from here
    from ..config import Config


def epoch_order(size: int, cfg: Config, epoch: int, rank: int = 0, world: int = 1) -> DistributedSampler:
    """This process's share of the epoch's permutation of `size` items: the order every data path follows."""
    sampler = DistributedSampler(
        range(size),
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=seeding.derive_seed(cfg.seed, "epoch order"),
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return sampler


def epoch_indices(size: int, cfg: Config, epoch: int, rank: int = 0, world: int = 1, start: int = 0) -> list[int]:
    """This process's share of the epoch's order from step `start` on: a run resumed inside an epoch skips the
    batches it took before it stopped, rather than replaying them."""
    return list(epoch_order(size, cfg, epoch, rank, world))[start * (cfg.batch_size // world) :]


def check_enough_images(n: int, cfg: Config) -> None:
    if n < cfg.batch_size:
        raise DatasetError(
            f"the dataset has {n} images, fewer than one batch of {cfg.batch_size}; "
            f"lower batch_size (and K) or use more images"
        )


def pretrain_split(cfg: Config) -> str:
    """The split MoCo pretrains on: STL-10's 100k unlabeled images, else train."""
    return spec(cfg.dataset).pretrain_split


class EpochSeeded(Dataset):
    """Makes the random augmentation of item i in epoch e a function of (seed, e, i) alone."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with seeding.seeded(self.seed, "views", self.epoch, index):  # leaves the caller's RNG untouched
            return self.dataset[index]


def pretrain_dataset(cfg: Config) -> EpochSeeded:
    """Items ((x_q, x_k), label): two independent augmentations of one image, on the CPU."""
    split = pretrain_split(cfg)
    transform = TwoViews(pretrain_transform(cfg.augmentation, cfg.image_size))
    dataset = load_split(cfg.dataset, cfg.data_root, split, transform, cfg.download)
    if len(dataset) == 0:
        raise DatasetError(f"the {split} split of {cfg.dataset} in {cfg.data_root} is empty")
    subset = seeded_subset(dataset, cfg.train_subset, cfg.seed, "train subset")
    if spec(cfg.dataset).layout == "files":  # empty and non-image files: reported, and refused if too many, up front
        samples = dataset.samples if subset is dataset else [dataset.samples[i] for i in subset.indices]
        check_signatures([path for path, _ in samples], dataset.root)
    return EpochSeeded(subset, cfg.seed)


class LoaderBatches:
    """The pretraining batches of one process through loader workers: ((x_q, x_k), labels) on `device`."""

    path = "cpu"

    def __init__(self, dataset: EpochSeeded, cfg: Config, device, rank: int = 0, world: int = 1):
        check_enough_images(len(dataset), cfg)
        self.dataset, self.cfg, self.device = dataset, cfg, torch.device(device)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int, start: int = 0) -> Iterator:
        cfg = self.cfg
        self.dataset.epoch = epoch  # read by the workers, which start below (persistent_workers=False)
        loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size // self.world,
            drop_last=True,
            sampler=epoch_indices(len(self.dataset), cfg, epoch, self.rank, self.world, start),
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            **loader_processes(cfg.workers),
        )
        for (x_q, x_k), y in loader:
            yield (
                (x_q.to(self.device, non_blocking=True), x_k.to(self.device, non_blocking=True)),
                y.to(self.device, non_blocking=True),
            )


def knn_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """(bank, test) for the kNN monitor: labelled train and test splits under the test transform."""
    r = recipe(cfg.augmentation)
    transform = eval_transform(cfg.image_size, r.mean, r.std)
    bank = load_split(cfg.dataset, cfg.data_root, "train", transform, cfg.download)
    test = load_split(cfg.dataset, cfg.data_root, "test", transform, cfg.download)
    return (
        seeded_subset(bank, cfg.knn_bank_size, cfg.seed, "knn bank"),
        seeded_subset(test, cfg.knn_test_size, cfg.seed, "knn test"),
    )


def eval_loader(dataset: Dataset, batch_size: int = 512, workers: int = 4, pin_memory: bool = False) -> DataLoader:
    """The images of a dataset in order, in batches (feature extraction, the kNN monitor)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        **loader_processes(workers),
    )
