"""One function per benchmark of the reference page, each with its protocol's hyperparameters as keywords.

Every benchmark takes a `Features` (an encoder's cached features of a dataset)
and datasets, and returns a dict with its `settings` (the hyperparameters it
ran with), `data` (the sizes of what it saw) and its results. `suite.evaluate`
composes them into results.json. The protocols are docs/protocols.md section 2.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..reference import LOW_SHOT_KS
from .embedding import rank_me
from .feature_cache import cached_features
from .knn import knn_accuracy
from .layers import LAYERS
from .linear import linear_probe, probe_recipe
from .lowshot import low_shot_protocol
from .svm import COSTS, svm_protocol

KNN_KS = (10, 20, 100, 200)


class Features:
    """An encoder's features of datasets, extracted once per (encoder, data, transform, subset, layer)
    and cached on disk (evaluate.feature_cache.cached_features)."""

    def __init__(self, encoder, identity: str, cache_dir: str | Path, device, workers: int = 4, progress: bool = True):
        self.encoder, self.identity, self.cache_dir = encoder, identity, Path(cache_dir)
        self.device, self.workers, self.progress = device, workers, progress

    def __call__(self, dataset: Dataset, data_id: str, layers) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return cached_features(
            self.encoder,
            self.identity,
            dataset,
            data_id,
            tuple(layers),
            self.cache_dir,
            self.device,
            workers=self.workers,
            progress=self.progress,
        )


def knn_benchmark(
    features: Features,
    bank: Dataset,
    test: Dataset,
    data_id: str,
    num_classes: int,
    *,
    ks=KNN_KS,
    T: float = 0.07,
    layers=("avgpool", "head"),
) -> dict:
    """Weighted kNN classification (docs/protocols.md section 2, "kNN classification").

    L2-normalised features, the k most cosine-similar bank images vote with weight exp(sim / T);
    top-1 and top-5 for each k (those larger than the bank are left out). layers: "avgpool" (the
    backbone's global average pool) and "head" (the projection; skipped for an encoder without one).
    """
    layers = tuple(name for name in layers if name != "head" or getattr(features.encoder, "head", None) is not None)
    bank_f, bank_y = features(bank, data_id + ":train", layers)
    test_f, test_y = features(test, data_id + ":test", layers)
    if any(k > len(bank_y) for k in ks):
        warnings.warn(
            f"the kNN bank holds {len(bank_y)} images: k = {[k for k in ks if k > len(bank_y)]} left out "
            f"(raise train_size to measure them)",
            stacklevel=2,
        )
    ks = tuple(k for k in ks if k <= len(bank_y))
    device = features.device
    by_layer = {
        name: {
            str(k): v
            for k, v in knn_accuracy(
                F.normalize(test_f[name], dim=1).to(device),
                test_y,
                F.normalize(bank_f[name], dim=1).to(device),
                bank_y.to(device),
                num_classes,
                ks=ks,
                T=T,
            ).items()
        }
        for name in layers
    }
    return {
        "settings": {"ks": list(ks), "T": T, "layers": list(layers)},
        "data": {"bank": len(bank_y), "test": len(test_y), "classes": num_classes},
        "features": by_layer,
    }


def svm_benchmark(
    train_f: dict,
    train_targets,
    test_f: dict,
    test_targets,
    *,
    class_names,
    costs=COSTS,
    folds: int = 3,
    solver: str = "torch",
    device=None,
) -> dict:
    """The VOC07 linear SVM per layer (docs/protocols.md section 2, "VOC07 SVM").

    train_f, test_f: features per layer; targets: images x classes in {1, 0, -1 (difficult)}.
    Rows / (L2 norm + 1e-5), squared hinge, class weights 2:1, the cost per class by 3-fold CV AP
    on the training set among `costs`, refit, VOC AP on test. "best_layer": the highest mAP of feat1-5.
    """
    by_layer = {
        name: svm_protocol(
            train_f[name],
            train_targets,
            test_f[name],
            test_targets,
            costs=costs,
            folds=folds,
            solver=solver,
            device=device,
            class_names=class_names,
        )
        for name in train_f
    }
    return {
        "settings": {"costs": list(costs), "folds": folds, "solver": solver, "layers": list(train_f)},
        "data": {"train": len(train_targets), "test": len(test_targets), "classes": len(class_names)},
        "layers": by_layer,
        "best_layer": best_layer(by_layer),
    }


def best_layer(by_layer: dict) -> str:
    """The layer of the highest mAP among feat1-5, as the reference picks the low-shot layer (MMSelfSup 0.x's
    benchmarks/svm_tools: feat1..feat5 only); among all measured layers when no feat layer was."""
    feats = [name for name in by_layer if name in LAYERS] or list(by_layer)
    return max(feats, key=lambda n: by_layer[n]["mAP"])


def lowshot_benchmark(
    train_f,
    train_targets,
    test_f,
    test_targets,
    *,
    layer: str,
    class_names,
    ks=LOW_SHOT_KS,
    samples: int = 5,
    costs=COSTS,
    seed: int = 0,
    solver: str = "torch",
    device=None,
) -> dict:
    """Low-shot VOC07 SVMs on one layer (docs/protocols.md section 2, "Low-shot VOC07 SVM").

    For each k: `samples` draws of k positives and 19k negatives per class; the cost picked on test
    (the reference's practice) and by cross-validation inside the sample, mAP mean/min/max/std.
    """
    low = low_shot_protocol(
        train_f,
        train_targets,
        test_f,
        test_targets,
        ks=ks,
        samples=samples,
        seed=seed,
        costs=costs,
        solver=solver,
        device=device,
        class_names=class_names,
    )
    return {
        "settings": {
            "layer": layer,
            "ks": list(ks),
            "samples": samples,
            "costs": list(costs),
            "seed": seed,
            "solver": solver,
        },
        "data": {"train": len(train_targets), "test": len(test_targets), "classes": len(class_names)},
        "layer": layer,
        "by_k": {str(k): v for k, v in low["by_k"].items()},
    }


def linear_benchmark(
    backbone,
    train_sets: dict,
    test_sets: dict,
    num_classes: int,
    *,
    protocols=("avgpool", "multihead"),
    epochs: int | None = None,
    lr: float | None = None,
    device="cpu",
    workers: int = 4,
    progress: bool = True,
) -> dict:
    """Linear probes on the frozen backbone (docs/protocols.md section 2, "Linear classification").

    protocols: "avgpool" (the MoCo protocol: lr 30, 100 epochs, steps at 60/80) and "multihead"
    (feat1..feat5, Nesterov lr 0.01, 90 epochs, steps at 30/60). epochs: fewer for a quick look
    (the lr steps keep their fractions); lr: the AvgPool probe's (a random network needs far less
    than 30). train_sets / test_sets: each protocol's data, under its own transforms.
    """
    results, recipes = {}, {}
    for protocol in protocols:
        recipe = probe_recipe(protocol, epochs, lr if protocol == "avgpool" else None)
        recipes[protocol] = dataclasses.asdict(recipe)
        results[protocol] = linear_probe(
            backbone,
            train_sets[protocol],
            test_sets[protocol],
            num_classes,
            protocol,
            recipe,
            device=device,
            workers=workers,
            progress=progress,
        )
    first = protocols[0]
    return {
        "settings": {"protocols": list(protocols), "recipes": recipes},
        "data": {"train": len(train_sets[first]), "test": len(test_sets[first]), "classes": num_classes},
        "protocols": results,
    }


def rankme_benchmark(
    features: Features, dataset: Dataset, data_id: str, *, layer: str = "avgpool", eps: float = 1e-7
) -> dict:
    """RankMe of the backbone's pooled features of `dataset` (the training split), label-free: the effective
    rank of the N x D feature matrix (evaluate.embedding.rank_me; Garrido et al. 2023, eq. 1)."""
    feats, _ = features(dataset, data_id + ":train", (layer,))
    z = feats[layer]
    return {
        "settings": {"layer": layer, "eps": eps, "split": "train"},
        "data": {"images": z.shape[0], "dims": z.shape[1]},
        "rankme": rank_me(z, eps),
    }
