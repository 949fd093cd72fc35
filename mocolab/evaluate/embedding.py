"""The geometry of an embedding: 2-D maps, neighbours, alignment and uniformity, collapse.

Functions of feature tensors (N x D), except `view_pairs`, which encodes two
augmented views of the same images. Features are L2-normalised first: MoCo's
loss only sees directions.

- alignment and uniformity: Wang and Isola 2020, "Understanding Contrastive
  Representation Learning through Alignment and Uniformity on the Hypersphere";
- the spread of normalised features as a collapse indicator: the per-dimension
  standard deviation, which is ~1/sqrt(D) for directions spread evenly and 0
  when every image maps to one point (SimSiam, Chen and He 2021, section 4.1);
- RankMe, the effective rank of the raw features: Garrido et al. 2023, "RankMe:
  Assessing the Downstream Performance of Pretrained Self-Supervised
  Representations by Their Rank" (ICML).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..augment import eval_transform, pipeline, recipe
from ..run.seeding import seeded
from ..run.workers import loader_processes
from ..weights import Pretrained
from .baselines import baseline_encoder, calibrate_bn
from .features import extract_layers


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs (rows of z1, z2): 0 when views map to one point."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return (z1 - z2).norm(dim=1).pow(alpha).mean().item()


def uniformity(z: torch.Tensor, t: float = 2) -> float:
    """log E exp(-t ||f(x) - f(y)||^2) over distinct pairs: lower is more uniform, 0 is collapse."""
    z = F.normalize(z.float(), dim=1)
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log().item()


def spread(z: torch.Tensor) -> float:
    """sqrt(D) x the mean per-dimension std of normalised features: ~1 spread out, -> 0 collapsed."""
    z = F.normalize(z.float(), dim=1)
    return (z.std(dim=0).mean() * z.shape[1] ** 0.5).item()


def rank_me(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido, Balestriero, Najman, LeCun 2023, eq. 1): exp of the entropy of the singular values of the
    N x D embedding matrix, normalised to sum to 1 (each plus eps): a smooth count of the directions the features
    use, from 1 (collapse to a line) to min(N, D). Label-free; computed on the raw, unnormalised features."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + eps
    return torch.exp(-(p * p.log()).sum()).item()


def pair_similarities(z1: torch.Tensor, z2: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of positive pairs (z1_i, z2_i) and of negatives (z1_i, z2_j), j != i."""
    sims = F.normalize(z1.float(), dim=1) @ F.normalize(z2.float(), dim=1).T  # sims: N x N
    positive = torch.eye(len(sims), dtype=torch.bool)
    return sims[positive].numpy(), sims[~positive].numpy()


def nearest_neighbours(query: torch.Tensor, bank: torch.Tensor, k: int = 8, query_index=None):
    """(similarities, indices), each Q x k: the k bank rows of highest cosine similarity to each query.

    query_index: the queries' own rows in the bank (when they are part of it), which are skipped.
    """
    sims = F.normalize(query.float(), dim=1) @ F.normalize(bank.float(), dim=1).T  # sims: Q x B
    if query_index is not None:
        sims[torch.arange(len(sims)), torch.as_tensor(query_index)] = -2.0  # below any cosine similarity
    return sims.topk(k, dim=1)


def retrieval_precision(features: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float:
    """Fraction of each item's k nearest neighbours (itself excluded) that share its label, in %."""
    _, idx = nearest_neighbours(features, features, k, query_index=torch.arange(len(features)))
    return 100 * (labels[idx] == labels[:, None]).float().mean().item()


def project_2d(
    features: torch.Tensor,
    method: str = "umap",
    seed: int = 0,
    pca_dims: int = 50,
    n_neighbors: int = 15,
    perplexity: float = 30.0,
) -> np.ndarray:
    """N x 2 coordinates of normalised features by UMAP (umap-learn) or t-SNE (scikit-learn).

    Features wider than pca_dims are first reduced by PCA (standard practice for
    both methods; it keeps the neighbourhoods and cuts the time). On unit vectors,
    Euclidean distance ranks neighbours as cosine similarity does.
    """
    from sklearn.decomposition import PCA

    x = F.normalize(features.float(), dim=1).numpy()
    if x.shape[1] > pca_dims and len(x) > pca_dims:
        x = PCA(pca_dims, random_state=seed).fit_transform(x)
    if method == "umap":
        import umap  # umap-learn: imported late, it is slow to import

        # The exact neighbour graph from torch: faster than UMAP's approximate search, and it
        # spares numba compiling that search (~45 s of a 10k-point map on a laptop CPU).
        distances, indices = _exact_knn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), n_neighbors)
        with warnings.catch_warnings():  # "no NNDescent index": only UMAP.transform of new points needs one
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
            return umap.UMAP(
                n_neighbors=n_neighbors, random_state=seed, n_jobs=1, precomputed_knn=(indices, distances, None)
            ).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    raise ValueError(f"unknown method {method!r}; choose 'umap' or 'tsne'")


def _exact_knn(x: torch.Tensor, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances and indices (N x k, nearest first, each point its own first neighbour)."""
    dists, idx = [], []
    for start in range(0, len(x), chunk):  # N x chunk at a time: 50k points never need an N x N matrix
        d, i = torch.cdist(x[start : start + chunk], x).topk(k, dim=1, largest=False)
        dists.append(d)
        idx.append(i)
    return torch.cat(dists).numpy(), torch.cat(idx).numpy()


class _Views(Dataset):
    """Two augmentations of each image of `images` (PIL images with labels), seeded per index."""

    def __init__(self, images: Dataset, transform, seed: int):
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, _ = self.images[i]
        with seeded(self.seed, "view pairs", i):
            return torch.stack([self.transform(image), self.transform(image)]), 0


def view_pairs(
    encoder,
    images: Dataset,
    transform,
    layer: str = "head",
    seed: int = 0,
    device="cpu",
    batch_size: int = 256,
    workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N x D each) of two augmented views of every image: positive pairs as in training."""
    loader = DataLoader(
        _Views(images, transform, seed), batch_size=batch_size, num_workers=workers, **loader_processes(workers)
    )
    # Both views go through one batch, encoded in eval mode (BN running statistics, no shuffle needed).
    z1, z2 = [], []
    for pair, _ in loader:  # pair: N x 2 x 3 x H x W
        feats, _ = extract_layers(
            encoder, [(pair.flatten(0, 1), torch.zeros(2 * len(pair)))], (layer,), device, progress=False
        )
        z = feats[layer].unflatten(0, (len(pair), 2))
        z1.append(z[:, 0])
        z2.append(z[:, 1])
    return torch.cat(z1), torch.cat(z2)


class Shown(NamedTuple):
    """One encoder of a side-by-side comparison, and the normalisation its images need."""

    encoder: torch.nn.Module
    mean: tuple
    std: tuple

    @property
    def pair_layer(self) -> str:
        """Where positive pairs are compared: the projection head's output, where the loss acts, if it has one."""
        return "head" if self.encoder.head is not None else "avgpool"


class _Transformed(Dataset):
    """A dataset of PIL images with labels, seen through `transform`."""

    def __init__(self, images: Dataset, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, label = self.images[i]
        return self.transform(image), label


def label_of(model: Pretrained) -> str:
    """The name a comparison shows a model under: "MoCo" for a mocolab run, else its registry or file name."""
    return "MoCo" if model.format == "mocolab" else model.name


def models_to_compare(
    model: Pretrained, images: Dataset, image_size: int, others=(), seed: int = 0
) -> dict[str, Shown]:
    """{"random init": ..., label_of(model): model, label_of(o): o for o in others}, each with its normalisation.

    The random-init encoder has `model`'s architecture and its BN statistics calibrated on a few batches
    of `images` (PIL images; see baselines.calibrate_bn), seen as `model` sees them.
    """
    random_init, _ = baseline_encoder("random", model.arch, model.cifar_stem, seed)
    calibration = _Transformed(images, eval_transform(image_size, model.mean, model.std))
    # No worker processes: calibrate_bn stops after a few batches, and an unfinished iterator's workers would
    # linger into the next loader's fork.
    loader = DataLoader(calibration, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(seed))
    shown = {"random init": Shown(calibrate_bn(random_init, loader, batches=10), model.mean, model.std)}
    for m in (model, *others):
        shown[label_of(m)] = Shown(m.encoder, m.mean, m.std)
    return shown


def embed(
    shown: dict[str, Shown], images: Dataset, image_size: int, layers, batch_size: int = 256, workers: int = 0
) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    """({name: {layer: N x D}}, labels): the same images through every encoder, each normalised its own way;
    "head" only for the encoders that have one."""
    features, labels = {}, None
    for name, s in shown.items():
        loader = DataLoader(
            _Transformed(images, eval_transform(image_size, s.mean, s.std)),
            batch_size=batch_size,
            num_workers=workers,
            **loader_processes(workers),
        )
        wanted = [layer for layer in layers if layer != "head" or s.encoder.head is not None]
        features[name], labels = extract_layers(s.encoder, loader, wanted, progress=False)
    return features, labels


def pair_transform(recipe_name: str, image_size: int, s: Shown):
    """The views of recipe `recipe_name` normalised for encoder `s`: every encoder sees the same crops."""
    return pipeline(dataclasses.replace(recipe(recipe_name, image_size), mean=s.mean, std=s.std))
