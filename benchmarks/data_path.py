"""The reference data path (torchvision in loader workers, fp32) against the fast path, one change per row.

    python benchmarks/data_path.py cifar --data-root /path/to/cifar10 --epochs 2 --subset 4096
    python benchmarks/data_path.py jpeg --images 512

cifar: the cifar10_demo recipe (ResNet-18) trained with `pretrain` for
--epochs on the same images, once per row, each row adding one change to the
one above, so that each change is credited with its own effect:

    reference        data_path="cpu" (PIL + torchvision in loader workers), fp32
    + data path      data_path="device" (decoded once, augmented on the device), fp32
    + bf16           and precision="bf16" (autocast; the loss and queue stay fp32)      GPU only
    + channels_last  and channels_last=True                                              GPU only

Columns: the data alone (one epoch of batches, no model), images/s of the
training step with its data, seconds per epoch, the kNN pass, kNN top-1 after
each epoch, and for the device path the one-off cost of decoding the split
into its uint8 cache and moving it to the device (its own column, not in the epochs).

jpeg: synthetic JPEGs of ImageNet size (500 x 375, smooth noise) in a temporary
folder; aug+ at 224 px for ResNet-50: images/s of the data alone through
torchvision's pipeline in workers and through the jpeg path (bytes from
workers, decoding and augmentation on the device), made in line and made 2
batches ahead by a thread (prefetch=2); with --train-epochs, the imagenet_mocov2
recipe trained on each row too (images/s of the last epoch); and the jpeg path's
stages timed one after another (files from the workers, decoding, the views).
benchmarks/step_time.py measures the training step alone.
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mocolab import make_config, pretrain
from mocolab.data import pretrain_batches
from mocolab.check.stages import jpeg_stages
from mocolab.data.device import cached_split
from mocolab.run.device import resolve_device

ROWS = {
    "reference": dict(data_path="cpu", precision="fp32"),
    "+ data path": dict(data_path="device", precision="fp32"),
    "+ bf16": dict(data_path="device", precision="bf16"),
    "+ channels_last": dict(data_path="device", precision="bf16", channels_last=True),
}


def data_rate(batches, epoch: int = 0) -> float:
    """Images per second of one epoch of batches (already on the device)."""
    tic, images = time.perf_counter(), 0
    for (x_q, _), _ in batches.epoch(epoch):
        images += len(x_q)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - tic)


def cache_seconds(cfg, device) -> float:
    """Decoding the training split into a fresh uint8 cache, and moving it to the device."""
    with tempfile.TemporaryDirectory() as cache:
        tic = time.perf_counter()
        images, _ = cached_split(cfg.dataset, cfg.data_root, "train", cfg.download, cache_dir=cache)
        images.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - tic


def cifar(args):
    device = resolve_device(-1 if args.gpus else 0)
    on_gpu = device.type == "cuda"
    rows = {name: extra for name, extra in ROWS.items() if on_gpu or name in ("reference", "+ data path")}
    print(
        f"{device} ({torch.cuda.get_device_name(device) if on_gpu else f'{torch.get_num_threads()} threads'}), "
        f"torch {torch.__version__}; rows: {', '.join(rows)}",
        flush=True,
    )
    results = {}
    for name, extra in rows.items():
        with tempfile.TemporaryDirectory() as out:
            cfg = make_config(
                "cifar10_demo",
                dataset=args.dataset,
                data_root=args.data_root,
                epochs=args.epochs,
                train_subset=args.subset,
                workers=args.workers,
                batch_size=args.batch_size,
                lr=0.06 * args.batch_size / 512,
                K=args.K,
                gpus=1 if on_gpu else 0,
                knn_every=1,
                knn_bank_size=args.knn_bank,
                knn_test_size=args.knn_test,
                output_dir=out,
                **extra,
            )
            cache_s = cache_seconds(cfg, device) if cfg.data_path == "device" else None
            data_only = data_rate(pretrain_batches(cfg, device))
            run = pretrain(cfg, progress=False)
        h = [e for e in run.history if e["epoch"] > 0]  # epoch 0: the random network's kNN, no training
        later = h[1:] or h  # the first epoch includes warm-up (cuDNN autotuning, worker start)
        results[name] = r = dict(
            data=data_only,
            train=np.mean([e["images_per_s"] for e in later]),
            train_s=np.mean([e["train_s"] for e in later]),
            knn_s=np.mean([e["knn_s"] for e in h]),
            knn=[round(e["knn_top1"], 2) for e in h],
            cache_s=cache_s,
        )
        cache = f"{r['cache_s']:.1f} s" if r["cache_s"] is not None else "-"
        print(
            f"{name:16s} | data alone {r['data']:8.0f} img/s | training {r['train']:7.0f} img/s, "
            f"{r['train_s']:6.2f} s/epoch | kNN pass {r['knn_s']:5.2f} s | kNN top-1 per epoch {r['knn']} | "
            f"cache build + upload {cache}",
            flush=True,
        )
    ref = results["reference"]
    for name, r in results.items():
        print(
            f"{name:16s} x{ref['train_s'] / r['train_s']:.2f} seconds per training epoch against the reference, "
            f"x{(ref['train_s'] + ref['knn_s']) / (r['train_s'] + r['knn_s']):.2f} with the kNN pass"
        )


def synthetic_jpegs(folder: Path, n: int, size=(500, 375), seed=0):
    """n JPEGs of ImageNet's typical size, smooth coloured noise (compresses like photos, not like noise)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = folder / "train" / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(d / f"{i:06d}.jpg", quality=90)
    (folder / "val").mkdir(exist_ok=True)
    (folder / "val" / "class0").symlink_to(folder / "train" / "class0")


def jpeg(args):
    device = resolve_device(-1 if args.gpus else 0)
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        synthetic_jpegs(Path(tmp), args.images)
        print(f"{args.images} synthetic 500x375 JPEGs written in {time.perf_counter() - tic:.1f} s", flush=True)
        cfg = make_config(
            "imagenet_mocov2",
            dataset="imagefolder",
            data_root=tmp,
            workers=args.workers,
            batch_size=args.batch_size,
            lr=0.03 * args.batch_size / 256,
            K=args.batch_size * 4,
            gpus=1 if device.type == "cuda" else 0,
            bn_splits=8 if args.batch_size % 8 == 0 else 1,
            output_dir=str(Path(tmp) / "run"),
        )
        rows = {
            "reference (PIL + torchvision in workers)": dict(data_path="cpu"),
            f"jpeg path (bytes from workers, decode + augment on {device}), in line": dict(
                data_path="jpeg", prefetch=0
            ),
            "jpeg path, 2 batches made ahead in a thread (prefetch=2)": dict(data_path="jpeg", prefetch=2),
        }
        rates, trained = {}, {}
        for name, extra in rows.items():
            row_cfg = dataclasses.replace(cfg, **extra)
            rates[name] = data_rate(pretrain_batches(row_cfg, device))
            print(f"{name}: {rates[name]:.0f} images/s (two views each, data alone)", flush=True)
            if args.train_epochs:  # the whole step too: ResNet-50, bf16 on a GPU, one kNN-free run per row
                out = str(Path(tmp) / f"run{len(trained)}")
                run = pretrain(
                    dataclasses.replace(row_cfg, epochs=args.train_epochs, knn_every=0, output_dir=out), progress=False
                )
                trained[name] = run.history[-1]["images_per_s"]
                print(
                    f"{name}: training ResNet-50 at 224 px {trained[name]:.0f} images/s "
                    f"(epoch {args.train_epochs} of {args.images} images)",
                    flush=True,
                )
        stages = jpeg_stages(pretrain_batches(dataclasses.replace(cfg, data_path="jpeg", prefetch=0), device), device)
        print(
            f"jpeg path, its stages one after another, ms per batch of {args.batch_size}: "
            + ", ".join(f"{stage} {ms:.1f}" for stage, ms in stages.items()),
            flush=True,
        )
    ref, fast, ahead = rates.values()
    print(f"ratio jpeg path / reference: x{fast / ref:.2f} data alone", end="")
    if trained:
        ref, fast, ahead = trained.values()
        print(f", x{fast / ref:.2f} training in line, x{ahead / ref:.2f} made ahead", end="")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cifar")
    c.add_argument("--dataset", default="imagefolder")
    c.add_argument("--data-root", required=True)
    c.add_argument("--epochs", type=int, default=2, help="epochs per row (a kNN pass after each)")
    c.add_argument("--subset", type=int, default=0, help="training images (0: all 50,000)")
    c.add_argument("--batch-size", type=int, default=512)
    c.add_argument("--K", type=int, default=4096)
    c.add_argument("--knn-bank", type=int, default=0)
    c.add_argument("--knn-test", type=int, default=0)
    c.add_argument("--workers", type=int, default=16 if torch.cuda.is_available() else 2)
    c.add_argument("--gpus", type=int, default=int(torch.cuda.is_available()))
    j = sub.add_parser("jpeg")
    j.add_argument("--images", type=int, default=512)
    j.add_argument("--batch-size", type=int, default=64)
    j.add_argument("--train-epochs", type=int, default=0, help="also pretrain this many epochs on each path")
    j.add_argument("--workers", type=int, default=16 if torch.cuda.is_available() else 2)
    j.add_argument("--gpus", type=int, default=int(torch.cuda.is_available()))
    args = parser.parse_args()
    cifar(args) if args.mode == "cifar" else jpeg(args)


if __name__ == "__main__":
    main()
