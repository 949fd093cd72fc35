"""The augmentation recipes of MoCo, on torchvision.transforms.v2.

Each recipe turns one PIL image into one normalised float tensor; `TwoViews`
applies it twice, independently, to make the query and key crops of a positive
pair (PROTOCOLS.md section 1). The operations run on PIL images, like the
official code, and become tensors only at the end.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The CIFAR demo's statistics (its std is the well-known slightly-off 0.2023, ...).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _to_normalised_tensor(mean, std) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def _to_tensor(mean, std, normalize: bool) -> list:
    """The tensor conversion ending every recipe; normalize=False keeps [0, 1] pixels for display."""
    return _to_normalised_tensor(mean, std) if normalize else [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def blur_kernel(size: int) -> int:
    """The blur kernel for crop size `size`: odd, ~10% of the image (23 px at 224).

    The official code blurs with PIL's GaussianBlur(radius=sigma), whose support is
    unbounded; 10% of 224 covers +-5.5 sigma at sigma = 2.
    """
    return int(0.1 * size) // 2 * 2 + 1


def aug_plus(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, crop_scale=(0.2, 1.0),
             jitter=(0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8, gray_p: float = 0.2, blur_p: float = 0.5,
             blur_sigma=(0.1, 2.0), flip_p: float = 0.5, normalize: bool = True) -> v2.Compose:
    """MoCo v2 "aug+": crop 0.2-1, jitter (0.4, 0.4, 0.4, 0.1) p=0.8, gray 0.2, blur p=0.5, flip.

    The keywords default to the recipe; the augmentation explorer (mocolab.widgets)
    moves them. jitter: (brightness, contrast, saturation, hue) strengths.
    """
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=tuple(crop_scale)),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
        v2.RandomGrayscale(p=gray_p),
        v2.RandomApply([v2.GaussianBlur(blur_kernel(size), sigma=tuple(blur_sigma))], p=blur_p),
        v2.RandomHorizontalFlip(p=flip_p),
        *_to_tensor(mean, std, normalize),
    ])


def aug_plus_operations(size: int = 224) -> dict[str, v2.Transform]:
    """Each operation of aug+ alone, always applied, with the recipe's parameters (for display)."""
    return {
        "random resized crop, scale 0.2-1": v2.RandomResizedCrop(size, scale=(0.2, 1.0)),
        "colour jitter (0.4, 0.4, 0.4, 0.1)": v2.Compose([v2.Resize(size), v2.ColorJitter(0.4, 0.4, 0.4, 0.1)]),
        "grayscale": v2.Compose([v2.Resize(size), v2.Grayscale(num_output_channels=3)]),
        "Gaussian blur, sigma 0.1-2": v2.Compose([v2.Resize(size),
                                                 v2.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))]),
        "horizontal flip": v2.Compose([v2.Resize(size), v2.RandomHorizontalFlip(p=1.0)]),
    }


def aug_v1(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, normalize: bool = True) -> v2.Compose:
    """MoCo v1: crop 0.2-1, gray 0.2, jitter (0.4, 0.4, 0.4, 0.4) always, flip; no blur."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0)),
        v2.RandomGrayscale(p=0.2),
        v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
        v2.RandomHorizontalFlip(p=0.5),
        *_to_tensor(mean, std, normalize),
    ])


def cifar_demo(size: int = 32, mean=CIFAR_MEAN, std=CIFAR_STD, *, normalize: bool = True) -> v2.Compose:
    """The official CIFAR-10 demo: crop (default scale 0.08-1), flip, jitter p=0.8, gray 0.2; no blur."""
    return v2.Compose([
        v2.RandomResizedCrop(size),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        *_to_tensor(mean, std, normalize),
    ])


RECIPES = {"aug_plus": aug_plus, "v1": aug_v1, "cifar": cifar_demo}


def normalisation(recipe: str) -> tuple[tuple, tuple]:
    """Mean and std that go with a recipe: the demo's CIFAR statistics, else ImageNet's."""
    return (CIFAR_MEAN, CIFAR_STD) if recipe == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)


def pretrain_transform(recipe: str, size: int, normalize: bool = True) -> v2.Compose:
    """The named recipe ("aug_plus", "v1" or "cifar") at crop size `size`; normalize=False for display."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation {recipe!r}; choose one of {sorted(RECIPES)}")
    mean, std = normalisation(recipe)
    return RECIPES[recipe](size, mean=mean, std=std, normalize=normalize)


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Deterministic test-time transform (kNN protocol).

    ImageNet-size data: resize the short side to 256/224 of `size`, centre-crop
    `size`. CIFAR-size data (size <= 96): the plain image, resized only if needed.
    """
    if size <= 96:
        geometry = [v2.Resize(size), v2.CenterCrop(size)]
    else:
        geometry = [v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size)]
    return v2.Compose([*geometry, *_to_normalised_tensor(mean, std)])


class TwoViews:
    """Two independent draws of `transform` on one image: the query and key crops."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)

    def __repr__(self):
        return f"TwoViews({self.transform!r})"
