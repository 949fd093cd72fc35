"""An encoder's features of every image of a loader, per layer.

Features are the pooled feat1..feat5 (evaluate.layers), "avgpool" (the global
average pool of the backbone) and "head" (the projection) of an encoder from a
checkpoint (mocolab.weights.load), a baseline (evaluate.baselines) or a run in
progress (the kNN monitor). feature_cache.py keeps them on disk for the benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .layers import layer_features


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
        if "head" in layers and backbone_layers and "avgpool" not in backbone_layers:
            backbone_layers.append("avgpool")  # the head's input, from the same pass over the backbone
        out = layer_features(encoder.backbone, images, backbone_layers) if backbone_layers else {}
        if "head" in layers:
            if encoder.head is None:
                name = getattr(encoder, "source", "this encoder")
                raise ValueError(
                    f"{name} has no projection head (a backbone-only checkpoint, such as a supervised, "
                    f"DINO or Barlow Twins ResNet): ask for 'avgpool' features instead of 'head'"
                )
            # head(backbone(x)) is the encoder's forward: with other layers asked for, the backbone ran already
            out["head"] = encoder.head(out["avgpool"]) if backbone_layers else encoder(images)
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
