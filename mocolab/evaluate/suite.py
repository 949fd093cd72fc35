"""Every benchmark of the reference page from one checkpoint, into one results.json.

    results = evaluate(checkpoint="runs/c10/checkpoint_last.pt", dataset="cifar10", data_root="data",
                       voc_root="data/VOCdevkit", output_dir="runs/c10/eval")

Benchmarks (PROTOCOLS.md section 2): "knn" (k = 10, 20, 100, 200, T = 0.07, on the
pooled backbone and the head), "svm" (the VOC07 protocol per layer; one-vs-rest
on a single-label dataset when there is no VOC), "lowshot" (on the best SVM
layer), "linear" (AvgPool and multi-head probes). `tables(results)` lays them
out like the reference page, with its numbers beside when the data is the reference's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import augment
from ..data import classes_of, load_split, seeded_subset
from .features import baseline_encoder, cached_features, calibrate_bn, load_encoder
from .knn import knn_accuracy
from .layers import LAYERS
from .linear import linear_probe, probe_transforms
from .lowshot import LOW_SHOT_KS, low_shot_protocol
from .svm import svm_protocol
from .voc import VOC07Classification, voc_svm_transform

# MoCo v2, 200 epochs (PROTOCOLS.md).
REFERENCE = {
    "knn_imagenet": {10: 55.6, 20: 55.7, 100: 53.7, 200: 52.5},
    "svm_voc07": {"feat5": 84.04},
    "lowshot_voc07": dict(zip(LOW_SHOT_KS, (43.14, 53.29, 65.34, 71.03, 75.42, 78.48, 80.88, 82.23))),
    "linear_imagenet": {"feat1": 15.96, "feat2": 34.22, "feat3": 45.78, "feat4": 61.11, "feat5": 66.24,
                        "avgpool": 67.58},
    "linear_places205": {"feat1": 20.92, "feat2": 35.72, "feat3": 42.62, "feat4": 49.79, "feat5": 52.25},
}
BENCHMARKS = ("knn", "svm", "lowshot", "linear")


def evaluate(checkpoint: str | None = None, baseline: str | None = None, arch: str = "resnet18",
             cifar_stem: bool = True, dataset: str = "cifar10", data_root: str = "data", voc_root: str | None = None,
             benchmarks=BENCHMARKS, image_size: int = 32, svm_layers=LAYERS + ("avgpool",),
             train_size: int = 0, test_size: int = 0, lowshot_ks=LOW_SHOT_KS, lowshot_samples: int = 5,
             probe_epochs: int = 100, probe_lr: float | None = None, output_dir: str = "runs/eval",
             cache_dir: str | None = None, device: str | None = None, workers: int = 4, seed: int = 0,
             progress: bool = True) -> dict:
    """Run the chosen benchmarks for a checkpoint (or a baseline: "random" / "supervised" with `arch`).

    dataset/data_root: the labelled data for kNN, linear probes and (without VOC) the SVMs;
    train_size/test_size: seeded subsets (0: all); probe_epochs: 100 is the protocol, fewer for a quick look.
    """
    unknown = set(benchmarks) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if checkpoint:
        encoder, identity = load_encoder(checkpoint)
    else:
        encoder, identity = baseline_encoder(baseline or "random", arch, cifar_stem, seed)
    encoder = encoder.to(device)
    out = Path(output_dir)
    cache = Path(cache_dir) if cache_dir else out / "feature_cache"
    mean, std = augment.normalisation("cifar" if image_size <= 64 else "imagenet")
    test_transform = augment.eval_transform(image_size, mean, std)

    def split(name, n, transform=test_transform):
        return seeded_subset(load_split(dataset, data_root, name, transform, download=True), n, seed)

    def features(ds, data_id, layers):
        return cached_features(encoder, identity, ds, data_id, layers, cache, device, workers=workers,
                               progress=progress)

    train_set, test_set = split("train", train_size), split("test", test_size)
    classes = classes_of(train_set)
    if not checkpoint and (baseline or "random") == "random":
        # Untrained BN statistics make eval-mode activations explode; use the data's.
        calibrate_bn(encoder, DataLoader(train_set, batch_size=256, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed)), device=device)
        identity += f"-bn-calibrated-on:{dataset}:{data_root}:{len(train_set)}:{seed}"
    results = {"encoder": identity, "checkpoint": str(checkpoint) if checkpoint else None, "dataset": dataset,
               "data_root": str(data_root), "train_size": len(train_set), "test_size": len(test_set),
               "seconds": {}}
    data_id = f"{dataset}:{data_root}"

    if "knn" in benchmarks:
        tic = time.perf_counter()
        layers = ("avgpool",) + (("head",) if getattr(encoder, "head", None) is not None else ())
        bank, bank_y = features(train_set, data_id + ":train", layers)
        test, test_y = features(test_set, data_id + ":test", layers)
        ks = tuple(k for k in (10, 20, 100, 200) if k <= len(bank_y))
        results["knn"] = {name: {str(k): v for k, v in knn_accuracy(
            F.normalize(test[name], dim=1).to(device), test_y, F.normalize(bank[name], dim=1).to(device),
            bank_y.to(device), len(classes), ks=ks, T=0.07).items()} for name in layers}
        results["seconds"]["knn"] = time.perf_counter() - tic

    if "svm" in benchmarks or "lowshot" in benchmarks:
        tic = time.perf_counter()
        if voc_root:
            voc_t = voc_svm_transform(max(image_size, 224) if image_size > 64 else image_size)
            svm_train = VOC07Classification(voc_root, "trainval", voc_t)
            svm_test = VOC07Classification(voc_root, "test", voc_t)
            train_t, test_t, names, svm_id = svm_train.targets, svm_test.targets, svm_train.classes, "voc07"
        else:  # one-vs-rest on the single-label dataset
            svm_train, svm_test, names, svm_id = train_set, test_set, classes, dataset
        layers = tuple(svm_layers)
        tr_f, tr_y = features(svm_train, f"{svm_id}:{voc_root or data_root}:svm-train", layers)
        te_f, te_y = features(svm_test, f"{svm_id}:{voc_root or data_root}:svm-test", layers)
        if not voc_root:
            train_t, test_t = F.one_hot(tr_y, len(classes)), F.one_hot(te_y, len(classes))
        results["svm_data"] = svm_id
        if "svm" in benchmarks:
            results["svm"] = {name: svm_protocol(tr_f[name], train_t, te_f[name], test_t, device=device,
                                                 class_names=names) for name in layers}
            results["svm_best_layer"] = max(results["svm"], key=lambda n: results["svm"][n]["mAP"])
            results["seconds"]["svm"] = time.perf_counter() - tic
        if "lowshot" in benchmarks:
            tic = time.perf_counter()
            layer = results.get("svm_best_layer", layers[-1])
            low = low_shot_protocol(tr_f[layer], train_t, te_f[layer], test_t, ks=lowshot_ks,
                                    samples=lowshot_samples, seed=seed, device=device, class_names=names)
            results["lowshot"] = {"layer": layer, **low, "by_k": {str(k): v for k, v in low["by_k"].items()}}
            results["seconds"]["lowshot"] = time.perf_counter() - tic

    if "linear" in benchmarks:
        tic = time.perf_counter()
        results["linear"] = {}
        for protocol in ("avgpool", "multihead"):
            recipe = "cifar" if image_size <= 64 else protocol
            train_t, test_t = probe_transforms(recipe, image_size, mean, std)
            results["linear"][protocol] = linear_probe(
                encoder.backbone, split("train", train_size, train_t), split("test", test_size, test_t),
                len(classes), protocol, epochs=probe_epochs, lr=probe_lr if protocol == "avgpool" else None,
                device=device, workers=workers, progress=progress)
        results["seconds"]["linear"] = time.perf_counter() - tic

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def tables(results: dict) -> str:
    """Markdown tables in the reference page's shapes; reference numbers where the data matches."""
    lines = []
    imagenet = results.get("dataset") == "imagefolder" and "imagenet" in results.get("data_root", "").lower()
    if "svm" in results or "lowshot" in results:
        voc = results.get("svm_data") == "voc07"
        lines += [f"**SVM ({'VOC07' if voc else results.get('svm_data')} mAP)**", "",
                  "| layer | mAP | reference |", "|---|---|---|"]
        for name, r in results.get("svm", {}).items():
            ref = REFERENCE["svm_voc07"].get(name, "") if voc else ""
            lines.append(f"| {name} | {r['mAP']:.2f} | {ref} |")
        if "lowshot" in results:
            ks = list(results["lowshot"]["by_k"])
            lines += ["", f"**Low-shot SVM ({results['lowshot']['layer']}), mAP mean over samples**", "",
                      "| cost picked | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
            for how in ("cost_picked_on_test", "cost_picked_by_cv"):
                row = [f"{results['lowshot']['by_k'][k][how]['mean']:.2f}" if how in results["lowshot"]["by_k"][k]
                       else "n/a" for k in ks]
                lines.append(f"| {'on test (reference)' if how.endswith('test') else 'by CV in sample'} | "
                             + " | ".join(row) + " |")
            if voc:
                lines.append("| reference | " + " | ".join(str(REFERENCE["lowshot_voc07"].get(int(k), ""))
                                                           for k in ks) + " |")
    if "linear" in results:
        lines += ["", "**Linear classification top-1**", "", "| head | top-1 | reference |", "|---|---|---|"]
        for protocol, r in results["linear"].items():
            for name, top1 in r["top1"].items():
                ref = REFERENCE["linear_imagenet"].get(name, "") if imagenet else ""
                lines.append(f"| {protocol}: {name} | {top1:.2f} | {ref} |")
    if "knn" in results:
        lines += ["", "**kNN top-1 (T = 0.07)**", ""]
        for feature, by_k in results["knn"].items():
            ks = list(by_k)
            lines += [f"| {feature} | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|",
                      "| measured | " + " | ".join(f"{by_k[k]['top1']:.2f}" for k in ks) + " |"]
            if imagenet and feature == "avgpool":
                lines.append("| reference | " + " | ".join(str(REFERENCE["knn_imagenet"].get(int(k), ""))
                                                           for k in ks) + " |")
            lines.append("")
    return "\n".join(lines)
