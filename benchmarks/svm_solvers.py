"""Wall time and agreement of the batched SVM solver against scikit-learn's LinearSVC.

    python benchmarks/svm_solvers.py --checkpoint runs/demo/checkpoint_last.pt --data-root /path/to/cifar10

Runs the VOC07 SVM protocol (19 costs, 3-fold CV, refit, test) one-vs-rest on
CIFAR-10 features of the checkpoint, for each layer given, with both solvers:
the batched Newton solver on --device (default: the GPU when there is one) and
scikit-learn's LinearSVC (liblinear, one CPU thread per problem, always on the CPU).
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from mocolab import augment, weights
from mocolab.data import load_split, seeded_subset
from mocolab.evaluate.feature_cache import cached_features
from mocolab.evaluate.svm import svm_protocol


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--layers", default="avgpool")
    parser.add_argument("--cache-dir", default="runs/feature_cache")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the batched solver runs"
    )
    args = parser.parse_args()
    model = weights.load(args.checkpoint)  # a mocolab run, a published name or a file of a known format
    encoder, identity = model.encoder, model.identity
    transform = augment.eval_transform(model.image_size, model.mean, model.std)
    layers = tuple(args.layers.split(","))
    data = {}
    for split, n in (("train", args.train_size), ("test", args.test_size)):
        ds = seeded_subset(load_split("imagefolder", args.data_root, split, transform), n, 0)
        data[split] = cached_features(
            encoder, identity, ds, f"cifar10:{args.data_root}:{split}", layers, args.cache_dir, workers=2
        )
    for layer in layers:
        (tr, tr_y), (te, te_y) = data["train"], data["test"]
        runs = {}
        for solver in ("torch", "sklearn"):
            tic = time.perf_counter()
            runs[solver] = svm_protocol(
                tr[layer], F.one_hot(tr_y, 10), te[layer], F.one_hot(te_y, 10), solver=solver, device=args.device
            )
            runs[solver]["seconds"] = time.perf_counter() - tic
        gap = np.max(np.abs(np.array(runs["torch"]["ap"]) - np.array(runs["sklearn"]["ap"])))
        print(
            f"{layer} ({tr[layer].shape[1]}-d, {len(tr_y)} train / {len(te_y)} test images): "
            f"batched on {args.device} {runs['torch']['seconds']:.1f} s, "
            f"LinearSVC on the CPU {runs['sklearn']['seconds']:.1f} s "
            f"(x{runs['sklearn']['seconds'] / runs['torch']['seconds']:.1f}); mAP {runs['torch']['mAP']:.2f} "
            f"vs {runs['sklearn']['mAP']:.2f}, largest per-class AP gap {gap:.3f}"
        )


if __name__ == "__main__":
    main()
