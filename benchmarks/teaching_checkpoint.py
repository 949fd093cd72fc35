"""Make the teaching checkpoint from a run, and measure what fp16 costs: kNN of fp32, fp16 and a random network.

    python benchmarks/teaching_checkpoint.py RUN_FOLDER --data-root /path/to/cifar10 [--ship]

RUN_FOLDER holds a finished `cifar10_cpu` run (checkpoint_last.pt, metrics.csv). Its query encoder is
written twice (weights.teaching.compact: fp32 and fp16), and each file, with the random network of the
same architecture (BN statistics calibrated on the data), is scored by weighted kNN (k = 10, 20, 100,
200, T = 0.1, avgpool) with all 50,000 training images as the bank and all 10,000 test images as queries.
The issue's rule: ship fp16 only if its top-1 stays within 0.1 point of fp32. --ship copies the chosen
file and metrics.csv into mocolab/weights/teaching/ and prints the sha256 prefix for weights.registry.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from mocolab.evaluate.suite import evaluate
from mocolab.weights import download, teaching

KS = (10, 20, 100, 200)


def knn(checkpoint: Path, data_root: str, workers: int, output_dir: Path, model: str = "moco") -> dict[int, float]:
    result = evaluate(
        checkpoint=str(checkpoint),
        model=model,
        dataset="imagefolder",
        data_root=data_root,
        benchmarks=("knn",),
        knn_ks=KS,
        knn_t=0.1,
        workers=workers,
        output_dir=str(output_dir),
        progress=False,
    )
    return {int(k): v["top1"] for k, v in result["knn"]["features"]["avgpool"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data-root", required=True, help="CIFAR-10 as an ImageFolder (train/ and test/)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ship", action="store_true", help="copy the chosen file into mocolab/weights/teaching/")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="teaching-"))
    files, scores = {}, {}
    trained_on = "CIFAR-10 train (50,000 images), no labels used"
    for precision in ("fp32", "fp16"):
        files[precision] = teaching.compact(
            args.run / "checkpoint_last.pt",
            tmp / f"{precision}.pt",
            half=precision == "fp16",
            dataset="cifar10",
            data_root="data",
            trained_on=trained_on,
        )
    for name, file, model in (("fp32", files["fp32"], "moco"), ("fp16", files["fp16"], "moco"),
                              ("random network", files["fp32"], "random")):  # fmt: skip
        tic = time.perf_counter()
        scores[name] = knn(file, args.data_root, args.workers, tmp / name.replace(" ", "_"), model)
        size = f"{file.stat().st_size / 1e6:.2f} MB" if model == "moco" else "-"
        print(f"{name:15} {size:8} " + "  ".join(f"k={k}: {v:.2f}" for k, v in scores[name].items()), end="")
        print(f"   ({time.perf_counter() - tic:.0f} s)")
    gap = max(abs(scores["fp16"][k] - scores["fp32"][k]) for k in KS)
    chosen = "fp16" if gap <= 0.1 else "fp32"
    print(f"largest fp16 - fp32 top-1 difference: {gap:.2f} points: ship {chosen}")
    if args.ship:
        teaching.FOLDER.mkdir(exist_ok=True)
        shutil.copyfile(files[chosen], teaching.FILE)
        shutil.copyfile(args.run / "metrics.csv", teaching.METRICS)
        print(f"{teaching.FILE}: sha256:{download.digests(teaching.FILE)['sha256'][:8]} (for weights.registry)")


if __name__ == "__main__":
    main()
