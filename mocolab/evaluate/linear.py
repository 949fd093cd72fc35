"""Linear classification on a frozen backbone (docs/protocols.md section 2).

- AvgPool protocol (MoCo's): global average pool, Linear initialised N(0, 0.01),
  SGD lr 30, momentum 0.9, no weight decay, 100 epochs with lr x0.1 at 60 and 80.
- Multi-head protocol: for each of feat1..feat5, non-affine BatchNorm, flatten,
  Linear; the five losses summed; Nesterov SGD lr 0.01, weight decay 1e-4;
  90 epochs with steps at 30 and 60 (ImageNet) or 28 with steps at 7, 14, 21 (Places205).

The backbone stays in eval mode (its BN statistics never change) and gets no
gradient; afterwards every backbone tensor, buffers included, is compared with
its state before training. Epoch counts scale down for small runs and the lr
steps move with them (same fractions of training).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ..augment import IMAGENET_MEAN, IMAGENET_STD
from ..models import stage_outputs
from ..run.workers import loader_processes
from ..schedule import lr_schedule
from .layers import LAYERS, STAGE_OF, layer_pool


@dataclass(frozen=True)
class ProbeRecipe:
    """The optimisation of one linear protocol (docs/protocols.md section 2)."""

    epochs: int
    lr: float
    weight_decay: float
    nesterov: bool
    milestones: tuple  # epochs where the lr drops x0.1
    momentum: float = 0.9
    batch_size: int = 256


PROBES = {
    "avgpool": ProbeRecipe(epochs=100, lr=30.0, weight_decay=0.0, nesterov=False, milestones=(60, 80)),
    "multihead": ProbeRecipe(epochs=90, lr=0.01, weight_decay=1e-4, nesterov=True, milestones=(30, 60)),
    "places": ProbeRecipe(epochs=28, lr=0.01, weight_decay=1e-4, nesterov=True, milestones=(7, 14, 21)),
}

# AlexNet's PCA lighting noise: eigenvalues and eigenvectors of ImageNet's RGB covariance.
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


class Lighting(nn.Module):
    """AlexNet-style PCA lighting noise on a [0, 1] image tensor (std 0.1)."""

    def __init__(self, std: float = 0.1):
        super().__init__()
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        rgb = (_EIGVEC * alpha * _EIGVAL).sum(dim=1)
        return image + rgb.view(3, 1, 1)


def probe_transforms(recipe: str, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(train, test) transforms: "avgpool" (RRC + flip), "multihead" (+ jitter and lighting),
    "places" (resize 256, centre crop 256, random crop, flip), "cifar" (pad-4 random crop + flip, for 32 px
    data; images of another size are first resized and centre-cropped to `size`)."""
    tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    resize = round(size * 256 / 224)
    test = v2.Compose([v2.Resize(resize), v2.CenterCrop(size), *tensor, v2.Normalize(mean, std)])
    if recipe == "avgpool":
        train = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *tensor]
    elif recipe == "multihead":
        train = [
            v2.RandomResizedCrop(size),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4),
            *tensor,
            Lighting(0.1),
        ]
    elif recipe == "places":  # the reference's CenterCrop(256): crops come from the central square only
        train = [v2.Resize(resize), v2.CenterCrop(resize), v2.RandomCrop(size), v2.RandomHorizontalFlip(), *tensor]
    elif recipe == "cifar":  # CIFAR's 32 px images pass the resize unchanged; other sizes are brought to `size`
        fit = [v2.Resize(size), v2.CenterCrop(size)]
        train = [*fit, v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip(), *tensor]
        test = v2.Compose([*fit, *tensor, v2.Normalize(mean, std)])
    else:
        raise ValueError(f"unknown probe recipe {recipe!r}")
    return v2.Compose([*train, v2.Normalize(mean, std)]), test


def scaled_milestones(epochs: int, reference_epochs: int, reference_steps) -> list[int]:
    """The lr steps of a reference schedule at the same fractions of a shorter (or longer) run."""
    return sorted({max(1, round(epochs * s / reference_epochs)) for s in reference_steps if s < reference_epochs})


# ----------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------


class AvgPoolHead(nn.Module):
    """Global average pool of layer4, Linear to classes, weights N(0, 0.01), bias 0."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, maps: dict) -> dict[str, torch.Tensor]:
        return {"avgpool": self.fc(F.adaptive_avg_pool2d(maps["layer4"], 1).flatten(1))}


class MultiHead(nn.Module):
    """For each of feat1..feat5: the protocol's pooling, BatchNorm2d(affine=False), flatten, Linear."""

    def __init__(self, shapes: dict[str, tuple[int, int]], num_classes: int):
        super().__init__()
        self.pools, self.bns, self.fcs = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for name in LAYERS:
            channels, size = shapes[STAGE_OF[name]]
            self.pools[name] = layer_pool(channels, size)
            self.bns[name] = nn.BatchNorm2d(channels, affine=False, momentum=0.1)
            dim = self.pools[name](torch.zeros(1, channels, size, size)).numel()
            self.fcs[name] = nn.Linear(dim, num_classes)
            nn.init.normal_(self.fcs[name].weight, 0.0, 0.01)
            nn.init.zeros_(self.fcs[name].bias)

    def forward(self, maps: dict) -> dict[str, torch.Tensor]:
        return {
            name: self.fcs[name](self.bns[name](self.pools[name](maps[STAGE_OF[name]])).flatten(1)) for name in LAYERS
        }


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


def probe_recipe(protocol: str = "avgpool", epochs: int | None = None, lr: float | None = None) -> ProbeRecipe:
    """The protocol's recipe (PROBES), for `epochs` (its lr steps moved to the same fractions) and `lr`."""
    if protocol not in PROBES:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROBES)}")
    ref = PROBES[protocol]
    epochs = epochs or ref.epochs
    return dataclasses.replace(
        ref, epochs=epochs, lr=lr or ref.lr, milestones=tuple(scaled_milestones(epochs, ref.epochs, ref.milestones))
    )


def linear_probe(
    backbone: nn.Module,
    train_set,
    test_set,
    num_classes: int,
    protocol: str = "avgpool",
    recipe: ProbeRecipe | None = None,
    device="cpu",
    workers: int = 4,
    progress: bool = True,
) -> dict:
    """Train the protocol's linear head(s) on a frozen backbone; top-1/top-5 (%) per head on test_set.

    protocol "avgpool": one head on the global average pool; "multihead" (and "places", the
    Places205 schedule): BN + linear heads on feat1..feat5. recipe: the optimisation, by default
    the protocol's (probe_recipe(protocol, epochs, lr) for a shorter run).
    """
    r = recipe or probe_recipe(protocol)
    backbone = backbone.to(device).eval()
    backbone.requires_grad_(False)
    before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}

    with torch.no_grad():
        sample = stage_outputs(backbone, train_set[0][0][None].to(device))
    shapes = {k: (v.shape[1], v.shape[-1]) for k, v in sample.items()}
    head = (
        AvgPoolHead(shapes["layer4"][0], num_classes) if protocol == "avgpool" else MultiHead(shapes, num_classes)
    ).to(device)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.nesterov
    )
    warn_if_small(len(train_set), len(test_set), r)
    loader = DataLoader(
        train_set, batch_size=r.batch_size, shuffle=True, num_workers=workers, **loader_processes(workers)
    )
    lrs = lr_schedule(r.lr, r.epochs, shape="step", milestones=r.milestones)  # one lr per epoch
    history = []
    for epoch in tqdm(range(r.epochs), desc=f"linear probe ({protocol})", disable=not progress):
        head.train()
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[epoch])  # a Python float: checkpoints hold no NumPy values
        total, seen = 0.0, 0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.no_grad():
                maps = stage_outputs(backbone, images)  # frozen, eval mode
            loss = sum(F.cross_entropy(logits, labels) for logits in head(maps).values())  # summed heads
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(labels), seen + len(labels)
        history.append({"epoch": epoch + 1, "loss": total / seen, "lr": float(lrs[epoch])})
    verify_unchanged(backbone, before)
    return {
        "protocol": protocol,
        "recipe": dataclasses.asdict(r),
        **evaluate_heads(backbone, head, test_set, r.batch_size, device, workers),
        "history": history,
    }


def warn_if_small(train_size: int, test_size: int, r: ProbeRecipe) -> None:
    """One warning for each set smaller than the probe's batch: the numbers it gives mean less than they seem."""
    if train_size < r.batch_size:
        warnings.warn(
            f"the probe's training set holds {train_size} images, fewer than one batch of "
            f"{r.batch_size}: each of its {r.epochs} epochs is a single step, not the protocol's "
            f"schedule; use more training images (train_size=0 takes the whole split)",
            stacklevel=3,
        )
    if test_size < r.batch_size:
        warnings.warn(
            f"the probe's test set holds {test_size} images, fewer than one batch of {r.batch_size}: "
            f"its accuracy moves in steps of {100 / max(test_size, 1):.1f} points; use more test "
            f"images (test_size=0 takes the whole split)",
            stacklevel=3,
        )


def verify_unchanged(backbone: nn.Module, before: dict) -> None:
    """Raise if any backbone tensor (BN buffers included) differs from its state before the probe."""
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(v.cpu(), before[k].cpu())]
    if changed:
        raise RuntimeError(
            f"the frozen backbone changed during the linear probe: {changed[:8]}"
            f"{f' (+{len(changed) - 8} more)' if len(changed) > 8 else ''}"
        )


@torch.no_grad()
def evaluate_heads(backbone, head, test_set, batch_size: int, device, workers: int) -> dict:
    head.eval()
    correct1, correct5, n = {}, {}, 0
    for images, labels in DataLoader(test_set, batch_size=batch_size, num_workers=workers, **loader_processes(workers)):
        images, labels = images.to(device), labels.to(device)
        for name, logits in head(stage_outputs(backbone, images)).items():
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1[name] = correct1.get(name, 0) + (top[:, 0] == labels).sum().item()
            correct5[name] = correct5.get(name, 0) + (top == labels[:, None]).any(1).sum().item()
        n += len(labels)
    return {
        "top1": {k: 100.0 * v / n for k, v in correct1.items()},
        "top5": {k: 100.0 * v / n for k, v in correct5.items()},
    }
