"""Datasets: one split of CIFAR-10/100, STL-10 or an image folder, with its classes and seeded subsets.

Supported: CIFAR-10 / CIFAR-100 and STL-10 through torchvision (downloaded into
`data_root`), and any ImageFolder root laid out as

    <root>/train/<class>/<image>      pretraining and the kNN bank
    <root>/val/<class>/<image>        (or test/) the kNN test set

(ImageNet, Imagenette, a CIFAR-10 export, your own photos). Unreadable images
in a folder are reported by path and skipped rather than crashing a long run.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import torchvision
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import has_file_allowed_extension

from ..run import seeding
from ..run import unreadable


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset mocolab reads. The config's choices, every data path and the fingerprint are built from
    this row: a new dataset is one more entry in SPECS."""

    title: str  # as messages name it
    open: Callable[..., Dataset]  # (root, split, transform, download) -> the split, its items (PIL image, label)
    splits: tuple[str, ...]  # the splits load_split accepts
    layout: Literal["files", "NHWC", "NCHW"]  # an image folder's `samples`, or torchvision's uint8 array `data`
    pretrain_split: str = "train"  # what MoCo pretrains on
    source: tuple[str, str, str] | None = None  # (archive, the folder it extracts to, page): to fetch it by hand

    def arrays(self, ds) -> tuple[torch.Tensor, torch.Tensor]:
        """(images N x 3 x H x W uint8, labels N long) of an in-memory split (layout NHWC or NCHW)."""
        images = torch.from_numpy(ds.data)
        labels = ds.targets if hasattr(ds, "targets") else ds.labels  # CIFAR's name, STL-10's
        return (images.permute(0, 3, 1, 2) if self.layout == "NHWC" else images).contiguous(), torch.as_tensor(
            labels
        ).long()


def _cifar(cls):
    def open_split(root, split, transform, download):
        return cls(root, train=split == "train", transform=transform, download=download)

    return open_split


def _stl10(root, split, transform, download):
    return torchvision.datasets.STL10(root, split=split, transform=transform, download=download)


def _folder(root, split, transform, download):
    return _image_folder(Path(root), split, transform)


_TORONTO = "https://www.cs.toronto.edu/~kriz/cifar.html"
SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "CIFAR-10",
        _cifar(torchvision.datasets.CIFAR10),
        ("train", "test"),
        "NHWC",
        source=("cifar-10-python.tar.gz", "cifar-10-batches-py", _TORONTO),
    ),
    "cifar100": DatasetSpec(
        "CIFAR-100",
        _cifar(torchvision.datasets.CIFAR100),
        ("train", "test"),
        "NHWC",
        source=("cifar-100-python.tar.gz", "cifar-100-python", _TORONTO),
    ),
    "stl10": DatasetSpec(
        "STL-10",
        _stl10,
        ("train", "test", "unlabeled"),
        "NCHW",
        pretrain_split="unlabeled",
        source=("stl10_binary.tar.gz", "stl10_binary", "https://cs.stanford.edu/~acoates/stl10/"),
    ),
    # <root>/train/ and <root>/val/ (or test/): ImageNet, Imagenette, a CIFAR-10 export, your own photos
    "imagefolder": DatasetSpec("an image folder", _folder, ("train", "test"), "files"),
}
DATASETS = tuple(SPECS)  # the names the configs accept


def spec(name: str) -> DatasetSpec:
    """The spec of a dataset name, or a DatasetError listing the names there are."""
    if name not in SPECS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {list(SPECS)}")
    return SPECS[name]


class DatasetError(RuntimeError):
    """A dataset is missing, empty, malformed or cannot be downloaded; the message says what to do."""


def check_unreadable_share(bad: list, total: int, where, limit: float | None = None) -> None:
    """Refuse a split with more than `limit` (unreadable.max_share()) of its files unreadable."""
    limit = unreadable.max_share() if limit is None else limit
    if total and len(bad) / total > limit:
        first = ", ".join(unreadable.printable(p) for p in bad[:5])
        raise DatasetError(
            f"{len(bad)} of {total} images in {where} cannot be read (more than {limit:.0%}), "
            f"e.g. {first}: is data_root the right folder? Remove or replace the broken files, "
            f"or allow more with the environment variable {unreadable.SHARE_ENV}=0.05 (a share)"
        )


def check_signatures(paths: list[str], where, threads: int = 16) -> None:
    """Before training: report every empty or non-image file (a read of 16 bytes each, in threads: the files
    are opened, not decoded) and refuse the split when too many are. A truncated JPEG passes here and is
    found when it is decoded."""
    with ThreadPoolExecutor(threads) as pool:
        problems = list(pool.map(unreadable.signature_problem, paths))
    bad = [(path, why) for path, why in zip(paths, problems) if why is not None]
    for path, why in bad:
        unreadable.report(path, why)
    check_unreadable_share([path for path, _ in bad], len(paths), where)


class SkipCorruptImageFolder(torchvision.datasets.ImageFolder):
    """ImageFolder that reports an unreadable image once (unreadable.report) and serves the next one.

    Only reading the file is guarded: an error of the transform (a crop larger than a
    tiny image, say) is a bug to see, not a broken file to skip.
    """

    max_consecutive_failures = 100

    def __init__(self, root: str, transform=None, classes: list[str] | None = None):
        self.fixed_classes = classes  # read by find_classes, which ImageFolder's __init__ calls
        super().__init__(root, transform=transform, allow_empty=classes is not None)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """The class folders, or with `classes` (the train split's) those, in their order: every split of a
        dataset numbers its classes alike, so a test split lacking one does not shift the others' labels."""
        found, _ = super().find_classes(directory)
        if self.fixed_classes is None:
            return found, {c: i for i, c in enumerate(found)}
        extra = sorted(set(found) - set(self.fixed_classes))
        if extra:
            raise DatasetError(
                f"{directory} holds classes that train/ lacks ({', '.join(extra[:5])}): their images have no "
                f"label the model could have learnt; remove them, or add them to train/"
            )
        missing = [c for c in self.fixed_classes if c not in found]
        if missing:
            warnings.warn(
                f"{directory} has no folder of {len(missing)} of train/'s classes ({', '.join(missing[:5])}): the "
                f"labels follow train/'s numbering, and those classes are not scored",
                stacklevel=4,
            )
        return list(self.fixed_classes), {c: i for i, c in enumerate(self.fixed_classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """torchvision's samples in torchvision's order, except that a folder reached twice through symlinks (a
        loop, a link to a parent or to a folder read already) is read once, and the link reported."""
        samples, available = [], set()
        for name in sorted(class_to_idx):
            top = os.path.join(directory, name)
            if not os.path.isdir(top):
                continue
            for root, files in sorted(_walk_once(top)):
                for file in sorted(files):
                    path = os.path.join(root, file)
                    if has_file_allowed_extension(path, extensions) if extensions else is_valid_file(path):
                        samples.append((path, class_to_idx[name]))
                        available.add(name)
        empty = sorted(set(class_to_idx) - available)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return samples

    def __getitem__(self, index: int):
        for attempt in range(self.max_consecutive_failures):
            i = (index + attempt) % len(self.samples)
            path, target = self.samples[i]
            try:
                image = unreadable.open_rgb(path)  # decodes the whole file, after a look at its size
            except (OSError, ValueError, SyntaxError) as err:  # what PIL raises on a broken file; a bomb
                unreadable.report(path, unreadable.reason(path, err))
                continue
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target
        raise DatasetError(
            f"{self.max_consecutive_failures} consecutive unreadable images from "
            f"{self.samples[index][0]} on in {self.root}: is the folder corrupt?"
        )


def _walk_once(top: str):
    """(folder, its file names) under `top`, following symlinks but entering each real folder once."""
    seen = {os.path.realpath(top)}
    for root, dirs, files in os.walk(top, followlinks=True):
        dirs.sort()  # which of two links to one folder is followed does not depend on the listing order
        for d in list(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if real in seen:
                dirs.remove(d)
                warnings.warn(
                    f"not following {unreadable.printable(os.path.join(root, d))}: it leads to "
                    f"{unreadable.printable(real)}, a folder read already (a symlink loop, or a link to a parent "
                    f"or a sibling); its images are counted once",
                    stacklevel=2,
                )
            seen.add(real)
        yield root, files


# ----------------------------------------------------------------------------
# Loading one split
# ----------------------------------------------------------------------------


def load_split(dataset: str, root: str | Path, split: str, transform=None, download: bool = True) -> Dataset:
    """One split of a dataset with `transform` applied to its PIL images.

    split: "train" or "test" for every dataset ("test" is val/ or test/ of an
    ImageFolder root), plus "unlabeled" for STL-10.
    """
    root, about = Path(root), spec(dataset)
    if split not in about.splits:
        raise DatasetError(f"{about.title} has no split {split!r}; its splits are {list(about.splits)}")
    if about.source is None:
        return about.open(root, split, transform, download)
    archive, folder, url = about.source
    try:
        return about.open(root, split, transform, download)
    except Exception as err:  # torchvision raises URLError, OSError or RuntimeError here
        how = "could not be downloaded" if download else "was not found (download=False)"
        raise DatasetError(
            f"{about.title} is not in {root} and {how}: {err}. Download {archive} from {url} and put it "
            f"in {root} (it is extracted on first use), or extract it so that {root / folder} exists; "
            f"or set dataset='imagefolder' and data_root to a folder with train/ and test/ "
            f"class subfolders."
        ) from err


def _image_folder(root: Path, split: str, transform) -> Dataset:
    layout = (
        f"expected {root}/train/<class>/<image> and {root}/val/ (or test/) laid out the same; "
        f"set data_root to that folder"
    )
    if not root.is_dir():
        raise DatasetError(f"data_root {root} does not exist: {layout}")
    candidates = ["train"] if split == "train" else ["val", "test"]
    folder = next((root / c for c in candidates if (root / c).is_dir()), None)
    if folder is None:
        raise DatasetError(f"no {' or '.join(c + '/' for c in candidates)} folder in {root}: {layout}")
    train = root / "train"
    classes = sorted(e.name for e in os.scandir(train) if e.is_dir()) if split != "train" and train.is_dir() else None
    try:
        dataset = SkipCorruptImageFolder(str(folder), transform=transform, classes=classes or None)
    except FileNotFoundError as err:  # no class folders, or no image files in them
        raise DatasetError(f"{folder} holds no images ({err}); {layout}") from err
    if not dataset.samples:
        raise DatasetError(f"{folder} holds no images; {layout}")
    return dataset


def classes_of(dataset: Dataset) -> list:
    """Class names of a dataset, looking through wrappers (Subset, ...) that keep it as `.dataset`."""
    while not hasattr(dataset, "classes") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return list(dataset.classes)


def subset_indices(size: int, n: int, *seed: int | str) -> list[int]:
    """The indices of a random subset of n of `size` items, drawn from seeding.derive_seed(*seed)
    (all of them, in order, when n = 0 or n >= size)."""
    if n <= 0 or n >= size:
        return list(range(size))
    return torch.randperm(size, generator=seeding.generator(*seed))[:n].tolist()


def seeded_subset(dataset: Dataset, n: int, *seed: int | str) -> Dataset:
    """A random subset of n items, the same for the same seed parts; n = 0 or n >= len: everything."""
    if n <= 0 or n >= len(dataset):
        return dataset
    return Subset(dataset, subset_indices(len(dataset), n, *seed))
