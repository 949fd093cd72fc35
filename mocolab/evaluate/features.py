"""An encoder's features, with a disk cache that cannot go stale.

Features are the pooled feat1..feat5 (evaluate.layers), "avgpool" (the global
average pool of the backbone) and "head" (the projection) of an encoder from a
checkpoint (mocolab.weights.load) or a baseline (evaluate.baselines). A cached
feature file is keyed by the encoder's identity (the checkpoint's content hash),
the dataset, split, subset, transform and layer, so a changed input never reuses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..run import checkpoint as ckpt
from ..data.fingerprint import files_digest
from .layers import layer_features


# ----------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------


@torch.no_grad()
def extract_layers(
    encoder: nn.Module, loader, layers=("avgpool",), device="cpu", progress: bool = True, keep_on_device: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Raw (unnormalised) float32 features of every image, per layer (on the CPU unless keep_on_device), and labels."""
    layers = tuple(layers)
    was_training = encoder.training
    encoder.eval()  # BN uses running statistics: a feature must not depend on its batch
    feats, labels = {name: [] for name in layers}, []
    for images, y in tqdm(loader, desc=f"features {','.join(layers)}", leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        backbone_layers = [n for n in layers if n != "head"]
        out = layer_features(encoder.backbone, images, backbone_layers) if backbone_layers else {}
        if "head" in layers:
            if encoder.head is None:
                name = getattr(encoder, "source", "this encoder")
                raise ValueError(
                    f"{name} has no projection head (a backbone-only checkpoint, such as a supervised, "
                    f"DINO or Barlow Twins ResNet): ask for 'avgpool' features instead of 'head'"
                )
            out["head"] = encoder(images)
        for name in layers:
            # To the CPU for the cache; the kNN monitor keeps them on the GPU (no sync per batch).
            feats[name].append(out[name].float() if keep_on_device else out[name].float().cpu())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return {name: torch.cat(v) for name, v in feats.items()}, torch.cat(labels)


def extract_features(
    encoder, loader, feature: str = "avgpool", device="cpu", normalize: bool = True, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) on `device` for the kNN monitor: "avgpool" (the backbone's global average pool)
    or "head" (the projection)."""
    if feature not in ("avgpool", "head"):
        raise ValueError(f"unknown feature {feature!r}; choose 'avgpool' or 'head'")
    feats, labels = extract_layers(encoder, loader, (feature,), device, progress, keep_on_device=True)
    f = feats[feature]
    return (F.normalize(f, dim=1) if normalize else f), labels.to(device)


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
        if path.exists():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored["key"] == keys[name]:
                feats[name], labels = stored["features"], stored["labels"]
    missing = [name for name in layers if name not in feats]
    if missing:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
        new, labels = extract_layers(encoder, loader, missing, device, progress)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for name in missing:
            ckpt.atomic_save({"key": keys[name], "features": new[name], "labels": labels}, paths[name])
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
