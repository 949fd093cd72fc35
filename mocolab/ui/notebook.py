"""What the notebooks need beyond the package's jobs: settings of 01 and 04, paths, checkpoints.

Every notebook turns its `parameters` cell into a frozen, validated config
(mocolab.settings): 01_augmentations an `AugmentationsConfig`, 02_pretrain a
`Config`, 03_evaluate an `EvalConfig`, 04_embeddings an `EmbeddingsConfig`,
05_transfer a `TransferConfig`, 06_ablations a `LabConfig` (mocolab.ablation_lab). A wrong key or type
fails in that cell, by name.
Relative paths in the parameters are resolved against the project folder
(mocolab.ui.project) first, wherever the kernel was started.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..run import checkpoint as ckpt
from .. import settings, weights
from ..data import DATASETS
from ..evaluate.layers import LAYERS
from .project import DEMO_CHECKPOINT, project_path


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
        settings.need(
            self.image_size > 0 and self.n_images >= 3,
            f"image_size must be positive and n_images at least 3 (the lesson shows 3 images), "
            f"got {self.image_size}, {self.n_images}",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EmbeddingsConfig:
    """Notebook 04: the checkpoint to look at, the data, and how much of it to embed."""

    checkpoint: str = DEMO_CHECKPOINT
    compare: tuple[str, ...] = ()  # more checkpoints (registry names or files) shown beside it
    dataset: Literal[DATASETS] = "cifar10"
    data_root: str = "data"
    image_size: int | None = None  # None: the checkpoint's training crop
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
        for name in ("n_points", "n_queries", "top_k", "n_pairs"):
            settings.need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        settings.need(
            self.image_size is None or self.image_size > 0,
            f"image_size must be positive or None, got {self.image_size}",
        )
        settings.need(
            self.top_k < self.n_points and self.n_pairs <= self.n_points,
            f"top_k ({self.top_k}) and n_pairs ({self.n_pairs}) must fit in n_points ({self.n_points})",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def in_project(cfg, fields=("data_root", "output_dir")):
    """A copy of a frozen config with its relative paths taken from the project folder (mocolab.ui.project).

    Applied after the presets fill in their defaults, so a preset's "data" lands in the
    project folder too, not in the folder the kernel happens to start in.
    """
    return dataclasses.replace(cfg, **{name: project_path(getattr(cfg, name)) for name in fields})


def find_checkpoint(path, how: str | None = None, fallback: str | None = None) -> str:
    """A published checkpoint's name as it is, or the absolute path of a checkpoint that exists, or an error that
    says where it looked and how to make one.

    how: the way to train one; by default notebook 02 or `make demo`, which write the default checkpoint.
    fallback: a registry name used, with a printed line saying so, when `path` is the default runs/demo
    checkpoint and there is none yet (notebooks 03 and 04 pass weights.TEACHING: a class without a GPU
    starts on a model that has learnt). Any other missing path is an error.
    """
    if str(path) in weights.REGISTRY:
        return str(path)
    found = project_path(path)
    if fallback and str(path) == DEMO_CHECKPOINT and not Path(found).is_file():
        print(
            f"{found} does not exist yet (notebook 02 or `make demo` writes it): showing {fallback}, "
            f"{weights.entry(fallback).title}. Set `checkpoint` to show another model."
        )
        return fallback
    if not found or not Path(found).is_file():
        how = how or (
            f"run notebook 02 or `make demo` (both write {project_path(DEMO_CHECKPOINT)}), or set "
            f"`checkpoint` to the checkpoint_last.pt of a pretraining run"
        )
        raise ckpt.CheckpointError(
            f"no checkpoint at {found}: train one first: {how}; or name a published "
            f"checkpoint ({', '.join(weights.REGISTRY)})"
        )
    return found


def training_data(
    model: weights.Pretrained, dataset: str | None = None, data_root: str | None = None
) -> tuple[str, str]:
    """(dataset, data_root): the ones given, else the data the mocolab run `model` was pretrained on.

    Evaluating on the pretraining data's labelled splits is what notebooks 03/04 do by
    default, so that they follow whatever `make demo` or notebook 02 was pointed at. A
    published model was pretrained on ImageNet, which mocolab cannot find by itself.
    """
    if (dataset is None or data_root is None) and model.config is None:
        raise ckpt.CheckpointError(
            f"{model.name} was pretrained on {model.pretrained_on}: set `dataset` and "
            f"`data_root` to the labelled data to evaluate it on (e.g. dataset='imagefolder', "
            f"data_root='/data/imagenet', or 'cifar10' and a download folder)"
        )
    dataset = model.dataset if dataset is None else dataset
    data_root = model.data_root if data_root is None else data_root
    return dataset, project_path(data_root)
