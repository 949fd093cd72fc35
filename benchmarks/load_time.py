"""Time to read and convert a ResNet-50 checkpoint of each format mocolab reads (weights.load).

    python benchmarks/load_time.py [--repeats 3] [--folder /tmp/layouts]

Each file is written in its source's exact key layout (tests/layouts.py: a seeded ResNet-50, with the key
encoder, queue and heads the real files hold) and loaded `repeats` times; the median is reported, split
into reading the file as data, recognising and converting its keys into the encoder, and hashing it (the
SHA-256 that names its features in the cache and the checksum check). A published file's first load also
downloads it; that is not counted here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the layout writers
import layouts  # noqa: E402

from mocolab import build_model, make_config, weights  # noqa: E402
from mocolab.run import checkpoint  # noqa: E402
from mocolab.weights import download, formats, safe_read  # noqa: E402


def write_all(folder: Path) -> dict[str, Path]:
    q, k = layouts.resnet50(0), layouts.resnet50(1)
    files = {
        "moco_official (v2)": folder / "moco_v2.pth.tar",
        "mocov3_official": folder / "r-50.pth.tar",
        "openmmlab (MMSelfSup 0.x, pre-1.6 format)": folder / "mmselfsup.pth",
        "openmmlab (mmpretrain 1.x)": folder / "mmpretrain.pth",
        "torchvision": folder / "resnet50.pth",
        "detectron2 (.pkl)": folder / "moco.pkl",
        "mocolab (imagenet_mocov2, K=65536)": folder / "mocolab.pt",
    }
    layouts.write_moco_official(files["moco_official (v2)"], "v2")
    layouts.write_mocov3_official(files["mocov3_official"])
    layouts.write_mmselfsup_0x(files["openmmlab (MMSelfSup 0.x, pre-1.6 format)"], q, k, layouts.mlp_v2())
    layouts.write_mmpretrain_1x(files["openmmlab (mmpretrain 1.x)"], q, layouts.mlp_v2())
    layouts.write_torchvision(files["torchvision"], q, "supervised")
    layouts.write_detectron2(files["detectron2 (.pkl)"])
    cfg = make_config("imagenet_mocov2")
    checkpoint.atomic_save(
        {
            "kind": "pretraining",
            "model": build_model(cfg).state_dict(),
            "config": cfg.to_dict(),
            "epoch": 1,
            "history": [],
        },
        files["mocolab (imagenet_mocov2, K=65536)"],
    )
    return files


def timed(path: Path) -> dict[str, float]:
    tic = time.perf_counter()
    state = safe_read.read(path)
    read = time.perf_counter()
    fmt = formats.recognise(state, path)
    formats.build(fmt.split(state), path)
    built = time.perf_counter()
    download.digests(path)
    hashed = time.perf_counter()
    weights.load(path)
    return {"read": read - tic, "convert": built - read, "hash": hashed - built, "load": time.perf_counter() - hashed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default="")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="mocolab_layouts_"))
    folder.mkdir(parents=True, exist_ok=True)
    files = write_all(folder)
    print(f"| format | file MB | weights.load s (median of {args.repeats}) | read | convert | hash |")
    print("|---|---|---|---|---|---|")
    for name, path in files.items():
        runs = [timed(path) for _ in range(args.repeats)]
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(
            f"| {name} | {path.stat().st_size / 1e6:.0f} | {median['load']:.2f} | {median['read']:.2f} | "
            f"{median['convert']:.2f} | {median['hash']:.2f} |"
        )


if __name__ == "__main__":
    main()
