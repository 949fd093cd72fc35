"""The recipes as torchvision.transforms.v2 pipelines: the reference augmentation.

`pipeline(recipe)` turns one PIL image into one normalised float tensor,
with the operations in the recipe's order, on PIL images like the official
code; `TwoViews` applies it twice, independently, to make the query and key
crops of a positive pair (docs/protocols.md section 1).
"""

from __future__ import annotations

import dataclasses

import torch
from torchvision.transforms import v2

from .recipes import IMAGENET_MEAN, IMAGENET_STD, Recipe, recipe


def _to_tensor(mean, std, normalize: bool) -> list:
    """The tensor conversion ending every pipeline; normalize=False keeps [0, 1] pixels for display."""
    tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    return tensor + [v2.Normalize(mean, std)] if normalize else tensor


def _operation(r: Recipe, op: str) -> v2.Transform:
    """One operation of the recipe as torchvision writes it (random application included)."""
    if op == "crop":
        return v2.RandomResizedCrop(r.size, scale=r.crop_scale, ratio=r.crop_ratio)
    if op == "flip":
        return v2.RandomHorizontalFlip(p=r.flip_p)
    if op == "gray":
        return v2.RandomGrayscale(p=r.gray_p)
    if op == "jitter":
        jitter = v2.ColorJitter(*r.jitter)
        return jitter if r.jitter_p == 1.0 else v2.RandomApply([jitter], p=r.jitter_p)  # v1 jitters always
    blur = v2.GaussianBlur(r.blur_kernel, sigma=r.blur_sigma)
    return blur if r.blur_p == 1.0 else v2.RandomApply([blur], p=r.blur_p)


def pipeline(r: Recipe, normalize: bool = True) -> v2.Compose:
    """The recipe's operations in its order, then conversion to a (normalised) float tensor."""
    return v2.Compose([_operation(r, op) for op in r.order if r.applies(op)] + _to_tensor(r.mean, r.std, normalize))


def pretrain_transform(name: str, size: int, normalize: bool = True) -> v2.Compose:
    """The named recipe ("aug_plus", "v1" or "cifar") at crop size `size`; normalize=False for display."""
    return pipeline(recipe(name, size), normalize)


def aug_plus(size: int = 224, *, normalize: bool = True, **changes) -> v2.Compose:
    """MoCo v2 aug+ at `size`; keyword `changes` replace recipe fields (crop_scale, jitter, jitter_p,
    gray_p, blur_p, blur_sigma, flip_p), as the augmentation explorer's sliders do."""
    return pipeline(dataclasses.replace(recipe("aug_plus", size), **changes), normalize)


def aug_v1(size: int = 224, *, normalize: bool = True) -> v2.Compose:
    """MoCo v1: crop 0.2-1, gray 0.2, jitter (0.4, 0.4, 0.4, 0.4) always, flip; no blur."""
    return pipeline(recipe("v1", size), normalize)


def cifar_demo(size: int = 32, *, normalize: bool = True) -> v2.Compose:
    """The official CIFAR-10 demo: crop (default scale 0.08-1), flip, jitter p=0.8, gray 0.2; no blur."""
    return pipeline(recipe("cifar", size), normalize)


def operations(r: Recipe) -> dict[str, v2.Transform]:
    """Each operation of the recipe alone, always applied, with the recipe's parameters (for display).

    The non-crop operations first resize the image to the crop size, so every row has one size.
    """
    b, c, s, h = r.jitter
    lo, hi = r.blur_sigma
    resize = v2.Resize(r.size)
    shown = {
        "crop": (
            f"random resized crop, scale {r.crop_scale[0]:g}-{r.crop_scale[1]:g}",
            v2.RandomResizedCrop(r.size, scale=r.crop_scale, ratio=r.crop_ratio),
        ),
        "jitter": (f"colour jitter ({b:g}, {c:g}, {s:g}, {h:g})", v2.Compose([resize, v2.ColorJitter(*r.jitter)])),
        "gray": ("grayscale", v2.Compose([resize, v2.Grayscale(num_output_channels=3)])),
        "blur": (
            f"Gaussian blur, sigma {lo:g}-{hi:g}",
            v2.Compose([resize, v2.GaussianBlur(r.blur_kernel, sigma=r.blur_sigma)]),
        ),
        "flip": ("horizontal flip", v2.Compose([resize, v2.RandomHorizontalFlip(p=1.0)])),
    }
    return dict(shown[op] for op in r.order if r.applies(op))


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Deterministic test-time transform (the kNN protocol, docs/protocols.md section 2).

    ImageNet-size data: resize the short side to 256/224 of `size`, centre-crop
    `size`. CIFAR-size data (size <= 96): the plain image, resized only if needed.
    """
    if size <= 96:
        geometry = [v2.Resize(size), v2.CenterCrop(size)]
    else:
        geometry = [v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size)]
    return v2.Compose([*geometry, *_to_tensor(mean, std, normalize=True)])


class TwoViews:
    """Two independent draws of `transform` on one image: the query and key crops."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)

    def __repr__(self):
        return f"TwoViews({self.transform!r})"
