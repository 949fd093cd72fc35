"""Feature extraction: run an encoder over a dataset and collect features with labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


@torch.no_grad()
def extract_features(encoder, loader: DataLoader, feature: str = "backbone", device="cpu",
                     normalize: bool = True, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every image in `loader`, the encoder in eval mode.

    feature: "backbone" (global-average-pooled backbone, PROTOCOLS.md kNN default)
    or "head" (the 128-d projection, the demo's monitor). Features stay on `device`.
    """
    if feature not in ("backbone", "head"):
        raise ValueError(f"unknown feature {feature!r}; choose 'backbone' or 'head'")
    was_training = encoder.training
    encoder.eval()  # BN uses running statistics: a feature must not depend on its batch
    feats, labels = [], []
    for images, y in tqdm(loader, desc=f"features ({feature})", leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        f = encoder.features(images) if feature == "backbone" else encoder(images)
        feats.append(F.normalize(f.float(), dim=1) if normalize else f.float())
        labels.append(y.to(device))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)
