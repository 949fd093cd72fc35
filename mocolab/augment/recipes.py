"""The augmentation recipes of MoCo as data: each paper's numbers, written once.

Everything that augments is built from a `Recipe`: the torchvision pipeline
(`transforms.pipeline`, the reference), the batched tensor ops of the fast
data path (`batched`), and the ipywidgets explorer (`mocolab.ui.widgets`).
docs/protocols.md section 1 lists the recipes and their sources:

- "aug_plus": MoCo v2's aug+ (main_moco.py with --aug-plus): crop 0.2-1,
  colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, Gaussian blur
  sigma 0.1-2 with p 0.5, flip; ImageNet mean/std.
- "v1": MoCo v1: crop 0.2-1, grayscale 0.2, then colour jitter (0.4, 0.4,
  0.4, 0.4) always, flip; no blur.
- "cifar": the official CIFAR-10 demo: crop (torchvision's default scale
  0.08-1), flip, jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2; no
  blur; the demo's CIFAR mean/std.

`order` is the order of the operations in the source code; an operation
whose probability is 0 is left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The CIFAR demo's statistics (its std is the well-known slightly-off 0.2023, ...).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
OPERATIONS = ("crop", "flip", "jitter", "gray", "blur")


@dataclass(frozen=True)
class Recipe:
    """One augmentation recipe: the parameters of every operation and their order."""

    name: str
    size: int = 224  # side of the random resized crop, pixels
    crop_scale: tuple[float, float] = (0.2, 1.0)  # fraction of the image's area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range (torchvision's default)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5
    order: tuple[str, ...] = ("crop", "jitter", "gray", "blur", "flip")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        settings.check_fields(self)
        unknown = [op for op in self.order if op not in OPERATIONS]
        settings.need(
            not unknown and self.order[0] == "crop",
            f"recipe {self.name!r}: order must start with 'crop' and use {list(OPERATIONS)}, got {list(self.order)}",
        )
        for p in ("jitter_p", "gray_p", "blur_p", "flip_p"):
            settings.need(0.0 <= getattr(self, p) <= 1.0, f"recipe {self.name!r}: {p} must lie in [0, 1]")

    def at(self, size: int) -> "Recipe":
        """The same recipe cropping to `size` pixels."""
        return dataclasses.replace(self, size=size)

    def applies(self, op: str) -> bool:
        """Whether the operation is part of the recipe (in its order, with a probability above 0)."""
        p = {"jitter": self.jitter_p, "gray": self.gray_p, "blur": self.blur_p, "flip": self.flip_p}.get(op, 1.0)
        return op in self.order and p > 0

    @property
    def gray_first(self) -> bool:
        """v1 turns images gray before the colour jitter; the others after."""
        return "jitter" in self.order and "gray" in self.order and self.order.index("gray") < self.order.index("jitter")

    @property
    def blur_kernel(self) -> int:
        return blur_kernel(self.size)


RECIPES: dict[str, Recipe] = {
    "aug_plus": Recipe("aug_plus"),
    "v1": Recipe("v1", jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0, order=("crop", "gray", "jitter", "flip")),
    "cifar": Recipe(
        "cifar",
        size=32,
        crop_scale=(0.08, 1.0),
        blur_p=0.0,
        order=("crop", "flip", "jitter", "gray"),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    ),
}


def recipe(name: str, size: int | None = None) -> Recipe:
    """The named recipe ("aug_plus", "v1" or "cifar"), cropping to `size` pixels (default: the recipe's)."""
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name] if size is None else RECIPES[name].at(size)


def blur_kernel(size: int) -> int:
    """The blur kernel for a crop of `size` pixels: odd, ~10% of the image (23 px at 224).

    The official code blurs with PIL's GaussianBlur(radius=sigma), whose support is
    unbounded; 10% of 224 covers +-5.5 sigma at sigma = 2.
    """
    return int(0.1 * size) // 2 * 2 + 1
