"""Write a one-file JPEG archive of CIFAR-10 out as an ImageFolder tree, for a machine that has no network.

    python benchmarks/cifar10_from_npz.py carry/cifar10-jpeg.npz /tmp/cifar10
    python -m mocolab.check --data-root /tmp/cifar10

The archive (55 MB) travels to a GPU machine faster than 60,000 small files. Its keys: `classes`, and per split
(`train`, `test`): `<split>_jpeg` (every file's bytes, concatenated in class then file-name order),
`<split>_offsets` (N + 1: file i is jpeg[offsets[i]:offsets[i + 1]]) and `<split>_labels`. The files are written
unchanged, as <root>/<split>/<class>/<NNNNN>.jpg; np.load reads the archive without pickle.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def write_split(archive, split: str, root: Path, classes: list[str]) -> int:
    jpeg, offsets, labels = archive[f"{split}_jpeg"], archive[f"{split}_offsets"], archive[f"{split}_labels"]
    for name in classes:
        (root / split / name).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        path = root / split / classes[labels[i]] / f"{i:05d}.jpg"
        path.write_bytes(jpeg[offsets[i] : offsets[i + 1]].tobytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(len(labels))))
    return len(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive")
    parser.add_argument("root")
    args = parser.parse_args()
    archive = np.load(args.archive, allow_pickle=False)
    classes = [str(c) for c in archive["classes"]]
    counts = {split: write_split(archive, split, Path(args.root), classes) for split in ("train", "test")}
    images = ", ".join(f"{n} {split} images" for split, n in counts.items())
    print(f"{args.root}: {images} in {len(classes)} classes")


if __name__ == "__main__":
    main()
