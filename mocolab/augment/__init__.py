"""MoCo's augmentation recipes (recipes.py), as torchvision pipelines (transforms.py, the reference)
and as batched tensor ops on the training device (batched.py, the fast data path)."""

from .recipes import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, RECIPES, Recipe, blur_kernel, recipe
from .transforms import TwoViews, aug_plus, aug_v1, cifar_demo, eval_transform, operations, pipeline, pretrain_transform


def normalisation(name: str) -> tuple[tuple, tuple]:
    """Mean and std that go with a recipe: the demo's CIFAR statistics for "cifar", else ImageNet's."""
    r = recipe(name)
    return r.mean, r.std


__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "Recipe",
    "TwoViews",
    "aug_plus",
    "aug_v1",
    "blur_kernel",
    "cifar_demo",
    "eval_transform",
    "normalisation",
    "operations",
    "pipeline",
    "pretrain_transform",
    "recipe",
]
