"""A pretrained encoder read once: `load(path or name)` gives the one object every consumer takes.

    model = load("moco_v2_800ep")          # a published checkpoint (downloaded into the cache if absent)
    model = load("runs/demo/checkpoint_last.pt")   # a mocolab run, or any file of a known format
    model.encoder, model.identity, model.image_size, model.mean, model.std, model.summary()

The file is read as data (safe_read.read), its format recognised from its
keys (weights.formats), and everything a consumer needs is decided here, once:
the encoder (backbone and, where the file has one, the projection head), an
identity for caches (the content's SHA-256), the image size and normalisation
it was trained with, the recipe nearest to its training views, the data it
was pretrained on, and the registry entry it is when its checksum is a
published one. Notebooks 03-05, evaluate(), the transfer job and the export
take a `Pretrained` or anything `load` accepts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import augment
from ..run import checkpoint as ckpt
from ..config import Config, config_from_dict
from ..models import Encoder
from . import download, formats, safe_read
from .registry import REGISTRY, Published


@dataclass(frozen=True, eq=False)
class Pretrained:
    """An encoder and what is known of it; frozen, except that `encoder` is a module (moved to a device in place)."""

    encoder: Encoder
    identity: str  # "<format or name>-<sha256 prefix>": the feature caches' key
    source: str  # what was asked for: a path or a registry name
    path: Path
    format: str  # a key of formats.FORMATS
    arch: str
    cifar_stem: bool
    image_size: int  # the training crop: evaluations default to it
    mean: tuple[float, ...]  # the normalisation of its training images
    std: tuple[float, ...]
    augmentation: str  # the mocolab recipe of (or nearest to) its training views
    pretrained_on: str
    published: Published | None = None  # the registry entry whose checksum this file has
    config: Config | None = None  # a mocolab checkpoint's config
    epochs_trained: int | None = None
    set_aside: tuple[str, ...] = ()  # what the file holds besides the encoder
    sha256: str = ""
    seconds: float = 0.0  # reading, checking and converting the file
    notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """A short label: the registry name, or the file's name."""
        return self.published.name if self.published else self.path.name

    @property
    def has_head(self) -> bool:
        return self.encoder.head is not None

    @property
    def dataset(self) -> str | None:
        """The dataset of a mocolab run (its labelled splits are the default evaluation data), else None."""
        return self.config.dataset if self.config else None

    @property
    def data_root(self) -> str | None:
        return self.config.data_root if self.config else None

    def summary(self) -> str:
        """One line: what the model is, what it was trained on, and where it came from."""
        head = "with its projection head" if self.has_head else "backbone only (no projection head)"
        if self.config is not None:
            cfg = self.config
            what = (
                f"{cfg.arch}, {self.epochs_trained} of {cfg.epochs} epochs of {cfg.preset} on {cfg.dataset} "
                f"({cfg.augmentation} augmentation, K={cfg.K}, m={cfg.m}, T={cfg.T})"
            )
            if self.published is not None:  # a run mocolab ships: the teaching checkpoint
                what = f"{self.published.name}: {self.published.title}; {what}, trained on {self.pretrained_on}"
        elif self.published is not None:
            what = f"{self.published.name}: {self.published.title}, {self.arch} {head}, on {self.pretrained_on}"
        else:
            what = f"{self.arch} {head}, from a file in the {self.format} format that is no published one mocolab knows"
        return f"{what}; {self.path} ({'; '.join((f'{self.format} format', *self.notes))})"


def load(
    source: str | Path | Pretrained,
    folder: str | Path | None = None,
    download_missing: bool = True,
    progress: bool = True,
) -> Pretrained:
    """Read a checkpoint once: a registry name (weights.REGISTRY; fetched into the cache when absent and
    download_missing) or a file of any known format. A Pretrained passes through unchanged."""
    if isinstance(source, Pretrained):
        return source
    tic = time.perf_counter()
    published = REGISTRY.get(str(source))
    if published is not None:
        path = download.cached_path(published, folder)
        if download_missing:
            path = download.fetch(published, folder, progress)
        elif not path.is_file():
            raise download.DownloadError(
                f"{published.name} is not in the cache ({path}): run `python -m "
                f"mocolab.weights fetch {published.name}`, or download {published.url} there"
            )
    else:
        path = Path(source)
        if not path.is_file():
            raise ckpt.CheckpointError(
                f"no checkpoint at {path.resolve()}, and no published checkpoint is called "
                f"{str(source)!r} (python -m mocolab.weights list shows them)"
            )
    content = path.read_bytes()  # once: the identity is the hash of the very bytes loaded (a run may replace the file)
    state = safe_read.read(path, content)
    fmt = formats.recognise(state, path)
    parts = fmt.split(state)
    encoder, arch, cifar_stem = formats.build(parts, path)
    ckpt.check_finite(encoder.state_dict(), path)
    found = download.digests_of(content)
    del content
    if published is not None and published.checksum and not download.matches(published.checksum, found):
        raise download.DownloadError(
            f"{path} is not the published {published.name}: its {published.checksum.split(':')[0]} begins "
            f"{found[published.checksum.split(':')[0]][:8]}, the source publishes {published.checksum}. Delete it "
            f"and run `python -m mocolab.weights fetch {published.name}`."
        )
    published = published or next((p for p in REGISTRY.values() if download.matches(p.checksum, found)), None)
    about = _describe(state, fmt.name, published, cifar_stem, found)
    return Pretrained(
        encoder=encoder,
        source=str(source),
        path=path,
        format=fmt.name,
        arch=arch,
        cifar_stem=cifar_stem,
        published=published,
        set_aside=tuple(parts.set_aside),
        sha256=found["sha256"],
        seconds=time.perf_counter() - tic,
        **about,
    )


def _describe(state, fmt: str, published: Published | None, cifar_stem: bool, found: dict) -> dict:
    """The Pretrained fields that depend on where the file comes from: a mocolab run, a published file, other."""
    if fmt == "mocolab":
        cfg = config_from_dict(state["config"])
        recipe = augment.recipe(cfg.augmentation)
        return dict(
            identity=f"moco-{found['sha256'][:16]}",
            image_size=cfg.image_size,
            mean=recipe.mean,
            std=recipe.std,
            augmentation=cfg.augmentation,
            config=cfg,
            pretrained_on=state.get("trained_on") or f"{cfg.dataset} at {cfg.data_root}",
            epochs_trained=max((int(row["epoch"]) for row in state.get("history", [])), default=0),
        )
    notes = []
    if published is not None:
        notes.append(
            f"{published.checksum.split(':')[0]} matches the published {published.checksum}"
            if published.checksum
            else "its source publishes no checksum"
        )
        recipe = augment.recipe(published.augmentation)
        return dict(
            identity=f"{published.name}-{found['sha256'][:16]}",
            image_size=published.image_size,
            mean=recipe.mean,
            std=recipe.std,
            augmentation=published.augmentation,
            pretrained_on=published.pretrained_on,
            epochs_trained=published.epochs,
            notes=tuple(notes),
        )
    # A file of a known format that is no published one: the conventions of the data its stem was made for.
    recipe = augment.recipe("cifar" if cifar_stem else "aug_plus")
    notes.append(f"assumed: trained at {recipe.size} px with {'CIFAR' if cifar_stem else 'ImageNet'} normalisation")
    return dict(
        identity=f"{fmt}-{found['sha256'][:16]}",
        image_size=recipe.size,
        mean=recipe.mean,
        std=recipe.std,
        augmentation=recipe.name,
        pretrained_on="unknown",
        notes=tuple(notes),
    )
