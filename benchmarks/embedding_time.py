"""Wall time of the 2-D maps of notebook 04: UMAP (umap-learn) and t-SNE (scikit-learn) of CIFAR-10 features.

    python benchmarks/embedding_time.py --checkpoint runs/demo/checkpoint_last.pt --data-root /path/to/cifar10

Extracts (and caches) avgpool features of --points test images, then times
`project_2d` in this process. The neighbour graph comes from torch either way;
UMAP's first call still includes numba compiling its layout optimisation, so
UMAP is timed twice (cold, then warm, in the same process); t-SNE once. Run it
in a fresh process to see the cold time a notebook's first map pays.
"""

import argparse
import time

from mocolab import augment, weights
from mocolab.data import load_split, seeded_subset
from mocolab.evaluate.embedding import project_2d
from mocolab.evaluate.feature_cache import cached_features


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--layer", default="avgpool")
    parser.add_argument("--methods", default="umap,tsne")
    parser.add_argument("--cache-dir", default="runs/feature_cache")
    args = parser.parse_args()
    model = weights.load(args.checkpoint)  # a mocolab run, a published name or a file of a known format
    encoder, identity = model.encoder, model.identity
    transform = augment.eval_transform(model.image_size, model.mean, model.std)
    ds = seeded_subset(load_split("imagefolder", args.data_root, "test", transform), args.points, 0)
    tic = time.perf_counter()
    feats, _ = cached_features(
        encoder, identity, ds, f"cifar10:{args.data_root}:test", (args.layer,), args.cache_dir, workers=2
    )
    x = feats[args.layer]
    print(
        f"features: {tuple(x.shape)} ({args.layer}) in {time.perf_counter() - tic:.1f} s (cached after the first run)"
    )
    for method in args.methods.split(","):
        for attempt in ("cold", "warm") if method == "umap" else ("",):
            tic = time.perf_counter()
            coords = project_2d(x, method)
            print(f"{method} {attempt}: {len(coords)} points in {time.perf_counter() - tic:.1f} s", flush=True)


if __name__ == "__main__":
    main()
