"""The reference data path (torchvision in loader workers, fp32) against the fast path, in one process.

    python benchmarks/data_path.py cifar --data-root /path/to/cifar10 --epochs 2 --subset 4096
    python benchmarks/data_path.py jpeg --images 512

cifar: for each path, first the data alone (one epoch of batches, no model),
then `pretrain` for --epochs on the same images (ResNet-18, the cifar10_demo
recipe), printing images/s, seconds per epoch, kNN top-1 after the last epoch
and the fast/reference ratios. Reference: data_path="cpu", precision="fp32".
Fast: data_path="device", precision="auto" (bf16 on a GPU), channels_last on a GPU.

jpeg: synthetic JPEGs of ImageNet size (500 x 375, smooth noise) in a temporary
folder; aug+ at 224 px for ResNet-50: images/s of the data alone through
torchvision's pipeline in workers and through the jpeg path (bytes from
workers, decoding and augmentation on the device). benchmarks/step_time.py
measures the training step these have to feed.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mocolab import make_config, pretrain
from mocolab.data import pretrain_dataset, pretrain_loader
from mocolab.device_data import device_batches
from mocolab.jpeg_data import jpeg_batches
from mocolab.train import resolve_device


def data_rate(batches, device, max_steps=None) -> float:
    """Images per second of one pass over the batches, the views moved to the device."""
    tic, images = time.perf_counter(), 0
    for step, ((x_q, x_k), _) in enumerate(batches):
        x_q, x_k = x_q.to(device), x_k.to(device)
        images += len(x_q)
        if max_steps and step + 1 == max_steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - tic)


def cifar(args):
    device = resolve_device(-1 if args.gpus else 0)
    on_gpu = device.type == "cuda"
    paths = {"reference": dict(data_path="cpu", precision="fp32"),
             "fast": dict(data_path="device", precision="auto", channels_last=on_gpu)}
    results = {}
    for name, extra in paths.items():
        with tempfile.TemporaryDirectory() as out:
            cfg = make_config("cifar10_demo", dataset=args.dataset, data_root=args.data_root, epochs=args.epochs,
                              train_subset=args.subset, workers=args.workers, batch_size=args.batch_size,
                              lr=0.06 * args.batch_size / 512, K=args.K, gpus=1 if on_gpu else 0,
                              knn_every=args.epochs, knn_bank_size=args.knn_bank, knn_test_size=args.knn_test,
                              output_dir=out, **extra)
            batches = (device_batches(cfg, device) if extra["data_path"] == "device"
                       else pretrain_loader(pretrain_dataset(cfg), cfg, epoch=0, pin_memory=on_gpu))
            data_only = data_rate(batches, device)
            run = pretrain(cfg, progress=False)
        h = run.history
        train_s = np.mean([r["train_s"] for r in h[1:]] if len(h) > 1 else [h[0]["train_s"]])
        epoch_s = np.mean([r["train_s"] + (r["knn_s"] or 0) for r in h])
        results[name] = dict(data=data_only, train=np.mean([r["images_per_s"] for r in h[1:] or h]),
                             train_s=train_s, epoch_s=epoch_s, knn=h[-1]["knn_top1"], knn_s=h[-1]["knn_s"])
        r = results[name]
        print(f"{name:9s} data alone {r['data']:8.0f} img/s | training {r['train']:7.1f} img/s, "
              f"{r['train_s']:.2f} s/epoch (first epoch excluded when there are more), "
              f"{r['epoch_s']:.2f} s/epoch with kNN | kNN top-1 {r['knn']:.2f} after {args.epochs} epochs "
              f"(kNN pass {r['knn_s']:.2f} s)", flush=True)
    ref, fast = results["reference"], results["fast"]
    print(f"ratio fast/reference on {device}: data alone x{fast['data'] / ref['data']:.2f}, "
          f"training step x{fast['train'] / ref['train']:.2f}, "
          f"seconds per epoch x{ref['epoch_s'] / fast['epoch_s']:.2f}")


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
        cfg = make_config("imagenet_mocov2", dataset="imagefolder", data_root=tmp, workers=args.workers,
                          batch_size=args.batch_size, K=args.batch_size * 4, gpus=1 if device.type == "cuda" else 0,
                          bn_splits=8 if args.batch_size % 8 == 0 else 1, output_dir=str(Path(tmp) / "run"))
        rates = {"reference (PIL + torchvision in workers)":
                 data_rate(pretrain_loader(pretrain_dataset(cfg), cfg, 0, pin_memory=device.type == "cuda"), device),
                 f"jpeg path (bytes from workers, decode + augment on {device})":
                 data_rate(jpeg_batches(cfg, device).set_epoch(0), device)}
    for name, rate in rates.items():
        print(f"{name}: {rate:.0f} images/s (two views each, data alone)")
    ref, fast = rates.values()
    print(f"ratio jpeg path / reference: x{fast / ref:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cifar")
    c.add_argument("--dataset", default="imagefolder")
    c.add_argument("--data-root", required=True)
    c.add_argument("--epochs", type=int, default=2)
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
    j.add_argument("--workers", type=int, default=16 if torch.cuda.is_available() else 2)
    j.add_argument("--gpus", type=int, default=int(torch.cuda.is_available()))
    args = parser.parse_args()
    cifar(args) if args.mode == "cifar" else jpeg(args)


if __name__ == "__main__":
    main()
