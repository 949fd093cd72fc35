"""The per-layer SVM protocol at VOC07's size: mocolab's solver against scikit-learn's LinearSVC.

    python benchmarks/svm_voc_size.py --data-root /path/to/cifar10 [--layer feat3] [--reference-classes 2]

VOC07's trainval has 5,011 images and 20 classes, the feat layers about 9,216 dimensions. Without VOC
here, the problem is built to that size from real features: 5,011 CIFAR-10 training images (and 4,952
test images, VOC07's test size) through the shipped teaching checkpoint, the feat3 layer (8,192-d), and
20 binary labels: each CIFAR class against the rest, and each pair of neighbouring classes (c or c+1)
against the rest, so 10-20% positives as in VOC. The whole protocol (19 costs, 3-fold CV, refit, test)
runs with mocolab's solver; LinearSVC, one fit per class, cost and fold, is timed on
--reference-classes of the 20 classes (its CV part, which is nearly all of its time) and scaled to 20.
"""

import argparse
import time
import warnings

import numpy as np
import torch

from mocolab import augment, weights
from mocolab.data import load_split, seeded_subset
from mocolab.evaluate import svm
from mocolab.evaluate.feature_cache import cached_features


def voc_like_targets(labels: np.ndarray) -> torch.Tensor:
    """20 binary columns in {1, 0}: the 10 classes one-vs-rest, then the 10 neighbouring pairs."""
    targets = np.zeros((len(labels), 20), dtype=np.int64)
    targets[np.arange(len(labels)), labels] = 1
    for c in range(10):
        targets[:, 10 + c] = (labels == c) | (labels == (c + 1) % 10)
    return torch.as_tensor(targets)


def reference_cv_seconds(x: np.ndarray, y: torch.Tensor, classes) -> float:
    """LinearSVC's cross-validation over the 19 costs for the given classes, as the protocol runs it."""
    tic = time.perf_counter()
    for j in classes:
        for held in svm.cv_folds((y[:, j] > 0).numpy()):
            train = np.setdiff1d(np.arange(len(x)), held)
            for cost in svm.COSTS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    svm.sklearn_svm_scores(x[train], y[train, j].numpy(), cost, x[held])
    return time.perf_counter() - tic


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="CIFAR-10 as an image folder (train/ and test/)")
    parser.add_argument("--layer", default="feat3")
    parser.add_argument("--reference-classes", type=int, default=2, help="classes LinearSVC is timed on (0: none)")
    parser.add_argument("--cache-dir", default="runs/feature_cache")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    model = weights.load(weights.TEACHING)
    transform = augment.eval_transform(model.image_size, model.mean, model.std)
    data = {}
    for split, n in (("train", 5011), ("test", 4952)):
        ds = seeded_subset(load_split("imagefolder", args.data_root, split, transform), n, 0)
        f, labels = cached_features(
            model.encoder, model.identity, ds, f"cifar10:{args.data_root}:{split}", (args.layer,), args.cache_dir
        )
        data[split] = f[args.layer], voc_like_targets(labels.numpy())
    (train_x, train_t), (test_x, test_t) = data["train"], data["test"]
    print(f"{args.layer}: {train_x.shape[0]} x {train_x.shape[1]} train, {len(test_x)} test, 20 classes")
    tic = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = svm.svm_protocol(train_x, train_t, test_x, test_t, device=args.device)
    seconds = time.perf_counter() - tic
    unconverged = [str(w.message) for w in caught if "Newton steps" in str(w.message)]
    print(
        f"mocolab on {args.device}: {seconds:.1f} s for the protocol (19 costs, 3 folds, refit, test); "
        f"mAP {ours['mAP']:.2f}; {'every problem converged' if not unconverged else unconverged}"
    )
    if args.reference_classes:
        classes = range(args.reference_classes)
        x = svm.normalize_rows(train_x).numpy()
        ref = reference_cv_seconds(x, svm.svm_labels(train_t), classes) * 20 / args.reference_classes
        print(
            f"LinearSVC on the CPU: {ref:.0f} s for the CV of 20 classes (timed on {args.reference_classes}, "
            f"scaled), so mocolab's whole protocol is {ref / seconds:.1f}x faster than LinearSVC's CV alone"
        )


if __name__ == "__main__":
    main()
