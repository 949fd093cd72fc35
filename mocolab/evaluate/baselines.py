"""The encoders a trained one is compared with: a random initialisation (its BN statistics calibrated on the
data) and a supervised ImageNet ResNet (torchvision's weights; ResNet-50 through the weights registry)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from .. import weights
from ..models import Encoder, build_encoder

# The supervised baseline of a ResNet-50: torchvision's current default weights (weights.registry).
SUPERVISED_RESNET50 = "torchvision_r50_v2"


def baseline_encoder(
    kind: str = "random", arch: str = "resnet50", cifar_stem: bool = False, seed: int = 0
) -> tuple[nn.Module, str]:
    """A baseline: "random" (seeded initialisation, MoCo-shaped) or "supervised"
    (torchvision's ImageNet weights, downloaded on first use; no projection head)."""
    if kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = build_encoder(arch, cifar_stem=cifar_stem, head="mlp" if arch == "resnet50" else "linear")
        return encoder.eval(), f"random-{arch}-{'cifar' if cifar_stem else 'imagenet'}stem-seed{seed}"
    if kind == "supervised":
        if arch == "resnet50":  # the registry's torchvision entry: downloaded with a checksum, read as data
            model = weights.load(SUPERVISED_RESNET50)
            return model.encoder, model.identity
        tv_weights = torchvision.models.get_model_weights(arch).DEFAULT
        backbone = getattr(torchvision.models, arch)(weights=tv_weights)
        backbone.fc = nn.Identity()
        return Encoder(backbone, head=None).eval(), f"supervised-{arch}-{tv_weights.name}"
    raise ValueError(f"unknown baseline {kind!r}; choose 'random' or 'supervised'")


@torch.no_grad()
def calibrate_bn(encoder: nn.Module, loader: DataLoader, batches: int = 20, device="cpu") -> nn.Module:
    """Set the BN running statistics of an (untrained) encoder from a few batches of data.

    A random initialisation keeps BN's initial statistics (mean 0, var 1), so in eval
    mode its activations grow layer after layer; the random-init baseline is only a
    fair baseline for scale-sensitive evaluations (linear probes) after this.
    """
    encoder.train()
    for module in encoder.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches seen
    for i, (images, _) in enumerate(loader):
        if i == batches:
            break
        encoder.backbone(images.to(device))
    return encoder.eval()
