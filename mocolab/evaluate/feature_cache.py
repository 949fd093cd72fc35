"""An encoder's features on disk, with a key that cannot go stale.

A cached feature file is keyed by the encoder's identity (the checkpoint's
content hash), the dataset, split, subset, transform, a fingerprint of the images
(data.fingerprint) and the layer, so a changed input never reuses it; the file
checks its own content (run.cache_file), so a damaged one is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.fingerprint import files_digest
from ..run import cache_file
from ..run.workers import loader_processes
from . import features


def cached_features(
    encoder: nn.Module,
    encoder_id: str,
    dataset: Dataset,
    dataset_id: str,
    layers=("avgpool",),
    cache_dir: str | Path = "runs/feature_cache",
    device="cpu",
    batch_size: int = 256,
    workers: int = 4,
    progress: bool = True,
):
    """extract_layers with a disk cache per layer.

    dataset_id names the data (e.g. "cifar10:/data/cifar10:test"); the key adds the
    transform, the subset indices, a fingerprint of what the images are (files_digest)
    and the layer, and the cached file stores its key, which is compared on load. A
    file changed, swapped or relabelled in place changes the fingerprint, so the cache
    never returns features of images that are no longer there.
    """
    cache_dir = Path(cache_dir)
    base = {
        "encoder": encoder_id,
        "dataset": dataset_id,
        "transform": repr(_transform_of(dataset)),
        "subset": _subset_digest(dataset),
        "size": len(dataset),
        "files": files_digest(dataset),
    }
    keys = {name: {**base, "layer": name} for name in layers}
    paths = {
        name: cache_dir / (hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:24] + ".pt")
        for name, k in keys.items()
    }
    feats, labels = {}, None
    for name, path in paths.items():
        stored = cache_file.load(path, keys[name])  # None when absent, or damaged (then it warns)
        if stored is not None:
            feats[name], labels = stored["features"], stored["labels"]
    missing = [name for name in layers if name not in feats]
    if missing:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, **loader_processes(workers))
        new, labels = features.extract_layers(encoder, loader, missing, device, progress)
        for name in missing:
            cache_file.save(paths[name], keys[name], {"features": new[name], "labels": labels})
        feats.update(new)
    return feats, labels


def _transform_of(dataset) -> object:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "transform", None)


def _subset_digest(dataset) -> str:
    """Digest of the index chain of nested Subsets ("all" when there is none)."""
    parts = []
    while isinstance(dataset, Subset):
        parts.append(hashlib.sha256(str(list(dataset.indices)).encode()).hexdigest()[:16])
        dataset = dataset.dataset
    return "/".join(parts) or "all"
