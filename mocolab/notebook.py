"""What the notebooks need beyond the package's jobs: the validated settings of 01 and 04, checkpoint summaries.

Every notebook turns its `parameters` cell into a frozen, validated config
(mocolab.settings): 01_augmentations an `AugmentationsConfig`, 02_pretrain a
`Config`, 03_evaluate an `EvalConfig`, 04_embeddings an `EmbeddingsConfig`,
05_transfer a `TransferConfig`. A wrong key or type fails in that cell, by name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from . import checkpoint as ckpt
from . import settings
from .config import config_from_dict
from .data import DATASETS
from .evaluate.layers import LAYERS


@dataclass(frozen=True)
class AugmentationsConfig:
    """Notebook 01: which images to augment, at which crop size."""

    dataset: Literal[DATASETS] = "cifar10"
    data_root: str = "data"
    image_size: int = 224  # crop size of aug+ (the ImageNet recipe)
    n_images: int = 6  # images drawn from the training split
    seed: int = 0  # which images, and which random draws
    output_dir: str = "runs/01_augmentations"

    def __post_init__(self):
        settings.check_fields(self)
        settings.need(self.image_size > 0 and self.n_images >= 3,
                      f"image_size must be positive and n_images at least 3 (the lesson shows 3 images), "
                      f"got {self.image_size}, {self.n_images}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EmbeddingsConfig:
    """Notebook 04: the checkpoint to look at, the data, and how much of it to embed."""

    checkpoint: str = "runs/demo/checkpoint_last.pt"
    dataset: Literal[DATASETS] = "imagefolder"
    data_root: str = "data/cifar10"
    image_size: int = 32
    n_points: int = 2000  # test images to embed
    methods: tuple[Literal["umap", "tsne"], ...] = ("umap", "tsne")
    layers: tuple[Literal[LAYERS], ...] = LAYERS
    n_queries: int = 6
    top_k: int = 8
    n_pairs: int = 500
    workers: int = 0
    seed: int = 0
    output_dir: str = "runs/04_embeddings"

    def __post_init__(self):
        settings.check_fields(self)
        for name in ("image_size", "n_points", "n_queries", "top_k", "n_pairs"):
            settings.need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        settings.need(self.top_k < self.n_points and self.n_pairs <= self.n_points,
                      f"top_k ({self.top_k}) and n_pairs ({self.n_pairs}) must fit in n_points ({self.n_points})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def checkpoint_summary(path) -> str:
    """One line on a pretraining checkpoint: architecture, epochs trained, recipe and data."""
    state = ckpt.load_pretraining(path)
    cfg = config_from_dict(state["config"])
    return (f"{cfg.arch}, {len(state['history'])} of {cfg.epochs} epochs of {cfg.preset} on {cfg.dataset} "
            f"({cfg.augmentation} augmentation, K={cfg.K}, m={cfg.m}, T={cfg.T})")
