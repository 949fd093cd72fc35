"""Every benchmark of the reference page for one encoder, into one results.json.

    cfg = EvalConfig(checkpoint="runs/c10/checkpoint_last.pt", dataset="cifar10", data_root="data",
                     voc_root="data/VOCdevkit", output_dir="runs/c10/eval")
    results = evaluate(cfg)          # or evaluate(checkpoint=..., ...)
    print(tables(results))

`checkpoint` is anything mocolab.weights.load reads: a mocolab run's checkpoint,
a published checkpoint's name ("moco_v2_800ep") or a file of a known format.
A `Pretrained` already loaded (notebook 03 loads it once) is passed as
evaluate(cfg, pretrained=model). The image size and normalisation are the
model's (its training crop and statistics) unless image_size is given.

Benchmarks (docs/protocols.md section 2; one function each in benchmarks.py):
"knn" (k = 10, 20, 100, 200, T = 0.07, on the pooled backbone and the head),
"svm" (the VOC07 protocol per layer; one-vs-rest on a single-label dataset when
there is no VOC), "lowshot" (on the best SVM layer), "linear" (AvgPool and
multi-head probes). results.json holds, per benchmark, its settings and data
sizes, and for the whole run the encoder (the checkpoint's content hash),
mocolab's git SHA, torch's version, the device and the image files the
loaders skipped as unreadable ("unreadable_files", also in unreadable.txt). `tables(results)` lays them
out like the reference page, with its numbers beside when the data is the reference's.

results.json is written after each benchmark, so a crash or a failing benchmark
never loses the finished ones: a failure is recorded under "errors" (with a
warning) and the remaining benchmarks still run. Run again into the same
output_dir, evaluate() reuses the benchmarks already there for the same encoder,
data sizes and settings, and computes only the missing or failed ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import settings, weights
from ..augment import eval_transform, normalisation
from ..data import DATASETS, classes_of, load_split, seeded_subset, warn_if_uninformative
from ..run import unreadable
from ..data.fingerprint import files_digest
from ..run.job import atomic_write_text, code_version
from ..reference import LOW_SHOT_KS
from .benchmarks import (
    KNN_KS,
    Features,
    knn_benchmark,
    linear_benchmark,
    lowshot_benchmark,
    rankme_benchmark,
    svm_benchmark,
)
from .baselines import baseline_encoder, calibrate_bn
from .layers import LAYERS
from .linear import probe_transforms
from .tables import knn_table, linear_table, lowshot_table, rankme_table, svm_table
from .voc import VOC07Classification, voc_svm_transform


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how it runs on an Evaluation (evaluate.benchmarks holds the protocols) and its table.

    Adding one is adding a row to BENCHMARKS: EvalConfig accepts its name, evaluate() runs it (after the
    rows above it), results.json holds what it returns under its name and tables() prints its table.
    """

    name: str
    run: Callable[["Evaluation"], dict]
    table: Callable[[dict], list[str]]


def _svm(e: Evaluation) -> dict:
    i = e.svm_inputs
    return svm_benchmark(i.train_f, i.train_t, i.test_f, i.test_t, class_names=i.names, device=e.device)


def _lowshot(e: Evaluation) -> dict:
    i = e.svm_inputs
    layer = e.results["svm"]["best_layer"] if "svm" in e.results else i.layers[-1]
    return lowshot_benchmark(
        i.train_f[layer],
        i.train_t,
        i.test_f[layer],
        i.test_t,
        layer=layer,
        class_names=i.names,
        ks=e.cfg.lowshot_ks,
        samples=e.cfg.lowshot_samples,
        seed=e.cfg.seed,
        device=e.device,
    )


def _linear(e: Evaluation) -> dict:
    protocols = ("avgpool", "multihead")
    transforms = {
        p: probe_transforms("cifar" if e.what.small_images else p, e.what.image_size, e.what.mean, e.what.std)
        for p in protocols
    }
    cfg = e.cfg
    return linear_benchmark(
        e.encoder.backbone,
        {p: _split(cfg, e.what, "train", cfg.train_size, transforms[p][0]) for p in protocols},
        {p: _split(cfg, e.what, "test", cfg.test_size, transforms[p][1]) for p in protocols},
        len(e.classes),
        protocols=protocols,
        epochs=cfg.probe_epochs,
        lr=cfg.probe_lr,
        device=e.device,
        workers=cfg.workers,
        progress=e.progress,
    )


def _knn(e: Evaluation) -> dict:
    return knn_benchmark(e.features, e.train_set, e.test_set, e.data_id, len(e.classes), ks=e.cfg.knn_ks, T=e.cfg.knn_t)


def _rankme(e: Evaluation) -> dict:
    return rankme_benchmark(e.features, e.train_set, e.data_id)


# In the reference page's order (the tables' order too); a benchmark runs after those above it.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("svm", _svm, svm_table),
        Benchmark("lowshot", _lowshot, lowshot_table),
        Benchmark("linear", _linear, linear_table),
        Benchmark("knn", _knn, knn_table),
        Benchmark("rankme", _rankme, rankme_table),
    )
}


def tables(results: dict) -> str:
    """Markdown tables in the reference page's shapes, beside the published numbers (evaluate.tables)."""
    return "\n".join(line for name, b in BENCHMARKS.items() if name in results for line in b.table(results))


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate, on which data, with which benchmarks. Defaults: the protocols' full settings."""

    checkpoint: str = ""  # a checkpoint file or a published checkpoint's name: its encoder, or its arch for a baseline
    model: Literal["moco", "random", "supervised"] = "moco"  # the checkpoint's encoder, or a baseline
    published: str = ""  # a registry name whose published numbers the tables show; "": the checkpoint's own entry
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"  # a baseline's, when there is no checkpoint
    cifar_stem: bool = True  # likewise
    dataset: Literal[DATASETS] = "cifar10"  # labelled data for kNN, the probes and (without VOC) the SVMs
    data_root: str = "data"
    voc_root: str = ""  # a VOCdevkit for the VOC07 SVMs; "": one-vs-rest on `dataset`
    benchmarks: tuple[str, ...] = tuple(BENCHMARKS)
    image_size: int | None = None  # None: the checkpoint's training crop (32 for the CIFAR recipes, 224 for ImageNet)
    train_size: int = 0  # seeded subset of the training split (0: all)
    test_size: int = 0  # seeded subset of the test split (0: all)
    knn_ks: tuple[int, ...] = KNN_KS
    knn_t: float = 0.07
    svm_layers: tuple[str, ...] = LAYERS + ("avgpool",)
    lowshot_ks: tuple[int, ...] = LOW_SHOT_KS
    lowshot_samples: int = 5
    probe_epochs: int | None = None  # None: the protocol's (100 AvgPool, 90 multi-head); lr steps scale with it
    probe_lr: float | None = None  # the AvgPool probe's; None: the protocol's 30 (a random network needs far less)
    output_dir: str = "runs/eval"
    cache_dir: str = ""  # "": output_dir/feature_cache
    device: str = "auto"  # "auto": a GPU if there is one
    workers: int = 4
    seed: int = 0

    label = "evaluation config"

    def __post_init__(self):
        settings.check_fields(self)
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS))
        settings.need(not unknown, f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
        settings.need(
            self.model != "moco" or self.checkpoint,
            "model='moco' evaluates a checkpoint: pass checkpoint=..., or model='random' / 'supervised'",
        )
        settings.need(
            not self.published or self.published in weights.REGISTRY,
            f"published={self.published!r} is no registry name; choose from {list(weights.REGISTRY)}",
        )
        bad = [name for name in self.svm_layers if name not in LAYERS + ("avgpool",)]
        settings.need(not bad, f"unknown svm_layers {bad}; choose from {list(LAYERS) + ['avgpool']}")
        for name in ("train_size", "test_size", "workers", "seed"):
            settings.need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(
    cfg: EvalConfig | None = None, progress: bool = True, pretrained: weights.Pretrained | None = None, **overrides
) -> dict:
    """Run cfg's benchmarks (or those of EvalConfig(**overrides)); writes output_dir/results.json.

    pretrained: the checkpoint already loaded (weights.load), so that it is read once; cfg.checkpoint, when
    set, must name the same source.
    """
    cfg = settings.build(EvalConfig, cfg.to_dict() if cfg else {}, overrides)
    if pretrained is not None:
        settings.need(
            cfg.checkpoint in ("", pretrained.source),
            f"checkpoint={cfg.checkpoint!r} is not the model passed ({pretrained.source}); pass one of them",
        )
        cfg = dataclasses.replace(cfg, checkpoint=pretrained.source)
    model = weights.load(pretrained or cfg.checkpoint) if cfg.checkpoint else None
    record = Path(cfg.output_dir) / "unreadable.txt"  # the images the evaluation loaders skip (and their workers)
    with unreadable.recording(record):
        return _evaluate(cfg, model, record, progress)


class Evaluated(NamedTuple):
    """How the images of an evaluation are prepared."""

    mean: tuple
    std: tuple
    image_size: int
    small_images: bool  # trained on CIFAR-size images: the probes use the CIFAR recipe (docs/protocols.md)


def _evaluate(cfg: EvalConfig, model: weights.Pretrained | None, record: Path, progress: bool) -> dict:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    out = Path(cfg.output_dir)
    what = _what(cfg, model)
    train_set, test_set = _split(cfg, what, "train", cfg.train_size), _split(cfg, what, "test", cfg.test_size)
    classes = classes_of(train_set)
    warn_if_uninformative(len(classes), len(train_set), 1, f"{cfg.dataset} at {cfg.data_root}")
    encoder, identity = _encoder(cfg, model, train_set, device)
    features = Features(encoder, identity, cfg.cache_dir or out / "feature_cache", device, cfg.workers, progress)
    results = {
        "encoder": identity,
        "checkpoint": cfg.checkpoint or None,
        "model": cfg.model,
        "checkpoint_summary": model.summary() if model else None,
        "published": _published(cfg, model),
        "image_size": what.image_size,
        "normalisation": {"mean": list(what.mean), "std": list(what.std)},
        "code_version": code_version(),
        "torch": torch.__version__,
        "device": str(device),
        "config": cfg.to_dict(),
        "dataset": cfg.dataset,
        "data_root": cfg.data_root,
        "train_size": len(train_set),
        "test_size": len(test_set),
        "data_fingerprint": {"train": files_digest(train_set), "test": files_digest(test_set)},
        "seconds": {},
        "errors": {},
        "unreadable_files": {},
    }
    if "svm" in cfg.benchmarks or "lowshot" in cfg.benchmarks:
        results["svm_data"] = "voc07" if cfg.voc_root else cfg.dataset
    out.mkdir(parents=True, exist_ok=True)
    done = _finished(out / "results.json", results)
    run = Evaluation(cfg, what, encoder, features, train_set, test_set, classes, device, progress, results)

    def save() -> None:
        """results.json as it stands, with the files skipped so far, replaced atomically."""
        results["unreadable_files"] = unreadable.recorded(record)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))

    for name, benchmark in BENCHMARKS.items():
        # One benchmark: reused from an earlier results.json of the same encoder and settings, or computed;
        # a failure is recorded with its error and the others go on; results.json is written after each.
        if name not in cfg.benchmarks:
            continue
        if name in done:
            results[name], results["seconds"][name] = done[name]
            continue
        tic = time.perf_counter()
        try:
            results[name] = benchmark.run(run)
        except Exception as error:  # recorded, not lost: the finished benchmarks stay in results.json
            results["errors"][name] = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"benchmark {name!r} failed ({results['errors'][name]}); the others go on and "
                f"{out / 'results.json'} records the error",
                stacklevel=3,
            )
        else:
            results["seconds"][name] = time.perf_counter() - tic
        save()
    save()
    return results


def _split(cfg: EvalConfig, what: Evaluated, name: str, n: int, transform=None):
    """A seeded subset of one split, under the test transform unless another is given."""
    transform = transform or eval_transform(what.image_size, what.mean, what.std)
    return seeded_subset(
        load_split(cfg.dataset, cfg.data_root, name, transform, download=True), n, cfg.seed, f"eval {name}"
    )


@dataclass
class Evaluation:
    """What the benchmarks of one evaluate() call read: the config, the data and the encoder's features."""

    cfg: EvalConfig
    what: Evaluated
    encoder: torch.nn.Module
    features: Features
    train_set: object
    test_set: object
    classes: list
    device: str
    progress: bool
    results: dict  # the benchmarks finished so far (low-shot reads the SVMs' best layer)

    @property
    def data_id(self) -> str:
        return f"{self.cfg.dataset}:{self.cfg.data_root}"

    @functools.cached_property
    def svm_inputs(self) -> SvmInputs:
        return _svm_inputs(self.cfg, self.what, self.features, self.train_set, self.test_set, self.classes)


def _finished(path: Path, results: dict) -> dict:
    """{benchmark: (result, seconds)} from an earlier results.json of the same encoder, settings and images
    (data.fingerprint: a changed file means new results)."""
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    now = json.loads(json.dumps({k: results[k] for k in ("encoder", "config", "data_fingerprint")}))
    same = all(earlier.get(k) == v for k, v in now.items())  # compared as JSON: tuples were saved as lists
    return {
        name: (earlier[name], earlier.get("seconds", {}).get(name))
        for name in BENCHMARKS
        if same and name in earlier and name not in earlier.get("errors", {})
    }


def _what(cfg: EvalConfig, model: weights.Pretrained | None) -> Evaluated:
    """Image size and normalisation of the evaluation: the checkpoint's (a baseline sees the same images),
    a supervised baseline's own normalisation; without a checkpoint, the conventions of cfg's stem."""
    if model is not None:
        mean, std, size, small = model.mean, model.std, model.image_size, model.augmentation == "cifar"
    else:
        small = cfg.cifar_stem
        (mean, std), size = normalisation("cifar" if small else "aug_plus"), 32 if small else 224
    if cfg.model == "supervised":  # torchvision's weights expect ImageNet's statistics
        mean, std = normalisation("aug_plus")
    return Evaluated(mean, std, cfg.image_size or size, small)


def _encoder(cfg: EvalConfig, model: weights.Pretrained | None, train_set, device):
    """(encoder on `device`, identity): the checkpoint's, or a baseline of the checkpoint's (or cfg's) architecture."""
    if cfg.model == "moco":
        return model.encoder.to(device), model.identity
    arch, cifar_stem = (model.arch, model.cifar_stem) if model is not None else (cfg.arch, cfg.cifar_stem)
    encoder, identity = baseline_encoder(cfg.model, arch, cifar_stem, cfg.seed)
    encoder = encoder.to(device)
    if cfg.model == "random":
        # Untrained BN statistics make eval-mode activations explode; use the data's.
        calibrate_bn(
            encoder,
            DataLoader(train_set, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed)),
            device=device,
        )
        identity += f"-bn-calibrated-on:{cfg.dataset}:{cfg.data_root}:{len(train_set)}:{cfg.seed}"
    return encoder, identity


def _published(cfg: EvalConfig, model: weights.Pretrained | None) -> dict | None:
    """The published numbers the tables compare with: cfg.published's, else the checkpoint's own entry's."""
    if cfg.model != "moco":
        return None
    entry = weights.entry(cfg.published) if cfg.published else (model.published if model else None)
    if entry is None:
        return None
    is_file = model is not None and model.published is not None and model.published.name == entry.name
    return {
        "name": entry.name,
        "title": entry.title,
        "numbers": json.loads(json.dumps(entry.numbers)),
        "source": entry.source_link(entry.numbers_source.split(" ")[0]),
        "pretrained_on": entry.pretrained_on,
        "this_file": is_file,
    }


class SvmInputs(NamedTuple):
    """Per-layer features and {1, 0, -1} targets of the SVM benchmarks' train and test sets."""

    train_f: dict
    train_t: torch.Tensor
    test_f: dict
    test_t: torch.Tensor
    names: list
    layers: tuple


def _svm_inputs(cfg: EvalConfig, what: Evaluated, features: Features, train_set, test_set, classes) -> SvmInputs:
    """The SVM and low-shot data: VOC07 when cfg.voc_root, else one-vs-rest on the dataset."""
    if cfg.voc_root:
        voc_t = voc_svm_transform(what.image_size, what.mean, what.std)
        svm_train, svm_test = (
            VOC07Classification(cfg.voc_root, "trainval", voc_t),
            VOC07Classification(cfg.voc_root, "test", voc_t),
        )
        names, svm_id = list(svm_train.classes), "voc07"
    else:
        svm_train, svm_test, names, svm_id = train_set, test_set, classes, cfg.dataset
    layers = tuple(cfg.svm_layers)
    tr_f, tr_y = features(svm_train, f"{svm_id}:{cfg.voc_root or cfg.data_root}:svm-train", layers)
    te_f, te_y = features(svm_test, f"{svm_id}:{cfg.voc_root or cfg.data_root}:svm-test", layers)
    if cfg.voc_root:
        train_t, test_t = svm_train.targets, svm_test.targets
    else:
        train_t, test_t = F.one_hot(tr_y, len(classes)), F.one_hot(te_y, len(classes))
    return SvmInputs(tr_f, train_t, te_f, test_t, names, layers)


__all__ = ["BENCHMARKS", "EvalConfig", "evaluate", "tables"]
