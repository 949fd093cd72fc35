"""A fingerprint of the images a dataset reads, for cache keys that cannot go stale.

The feature cache (evaluate.feature_cache) and the device path's decoded-image cache
(data.device) key their files with it: a file changed, swapped between classes or
relabelled in place changes the fingerprint, so neither cache returns what was
computed from images that are no longer there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

CONTENT_HASH_BYTES = 64 * 1024


def files_digest(dataset) -> str:
    """A fingerprint of the images a (possibly subset) dataset reads, and their labels.

    Image folders (`samples`): each file's path, label, size and modification time,
    and for files up to CONTENT_HASH_BYTES their content too (CIFAR-10's 50,000 JPEGs:
    1.0 s from the page cache, 4.2 s cold, on a 2-core machine; ImageNet-size files are
    only stat-ed). In-memory arrays (torchvision's CIFAR and STL-10, `data`): the bytes
    of the rows used and their labels. VOC07 (`ids`): each JPEG's path, size and
    modification time, and the label matrix. These are the layouts of data.SPECS and VOC.
    """
    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    digest = hashlib.sha256()

    def stat(path, label) -> None:
        info = os.stat(path)
        # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
        digest.update(f"{path}\0{label}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        if info.st_size <= CONTENT_HASH_BYTES:  # cheap for small files; catches a rewrite that keeps size and time
            digest.update(hashlib.sha256(Path(path).read_bytes()).digest())

    if hasattr(dataset, "samples"):
        for i in indices if indices is not None else range(len(dataset.samples)):
            stat(*dataset.samples[i])
    elif hasattr(dataset, "data"):
        rows = dataset.data if indices is None else dataset.data[indices]
        labels = np.asarray(getattr(dataset, "targets", getattr(dataset, "labels", [])))
        digest.update(np.ascontiguousarray(rows).tobytes())
        digest.update(np.ascontiguousarray(labels if indices is None else labels[indices]).tobytes())
    elif hasattr(dataset, "ids") and hasattr(dataset, "targets"):
        for i in indices if indices is not None else range(len(dataset.ids)):
            stat(Path(dataset.root) / "JPEGImages" / f"{dataset.ids[i]}.jpg", dataset.targets[i].tolist())
    else:  # keyed by its name and size alone, a cache would return what other images gave: refuse instead
        raise TypeError(
            f"cannot fingerprint a {type(dataset).__name__}: the caches key a dataset by what its "
            f"images are, read from an image folder's `samples`, an in-memory array `data` (the "
            f"layouts of data.SPECS) or VOC07's `ids`; give the dataset one of these"
        )
    return digest.hexdigest()[:24]
