"""Which MoCo recipe visibly learns within minutes on a laptop CPU? The sweep behind the `cifar10_cpu` preset.

    python benchmarks/cpu_recipe_sweep.py --data-root /path/to/cifar10            # every candidate
    python benchmarks/cpu_recipe_sweep.py --data-root ... --only w16_all_e2 demo   # some of them

Each candidate is the cifar10_demo recipe (MoCo v2 as it is: two views, momentum
encoder, queue, InfoNCE, split BN with shuffling) with the network, image
count, batch, K, lr and epochs sized for a CPU. Every one is measured with the
same kNN monitor (head output, k = 200, T = 0.1; the same 5,000-image bank and
2,000 test images), before its first step (the random network, epoch 0) and
after every epoch. Prints a table row per candidate: training images/s,
minutes (training and kNN passes, the install and notebook excluded), kNN of
the random network, kNN after each epoch, and the gain in points.
"""

import argparse
import tempfile
import time

import torch

from mocolab import make_config, pretrain

COMMON = dict(dataset="imagefolder", gpus=0, workers=2, knn_every=1, knn_bank_size=5000, knn_test_size=2000)
CANDIDATES = {
    # The demo before this sweep: ResNet-18, 2,048 images, 4 epochs.
    "demo": dict(arch="resnet18", train_subset=2048, batch_size=64, K=1024, lr=0.0075, epochs=4),
    # A narrow ResNet-10 (one BasicBlock per stage, widths 16-128) on more images. (resnet10_w32, widths
    # 32-256, runs the step at a third of the speed: 231 against 696 images/s at batch 128 on 2 cores.)
    "w16_all_e2_device": dict(
        arch="resnet10_w16", train_subset=0, batch_size=256, K=4096, lr=0.03, epochs=2, data_path="device"
    ),
    "w16_20k_e5": dict(
        arch="resnet10_w16", train_subset=20_000, batch_size=256, K=4096, lr=0.06, epochs=5, data_path="device"
    ),
    "w16_all_e4": dict(
        arch="resnet10_w16", train_subset=0, batch_size=256, K=4096, lr=0.06, epochs=4, data_path="device"
    ),
    "w16_all_e4_avgpool": dict(
        arch="resnet10_w16",
        train_subset=0,
        batch_size=256,
        K=4096,
        lr=0.06,
        epochs=4,
        data_path="device",
        knn_feature="avgpool",
    ),
    "w16_all_e3_avgpool_lr012": dict(
        arch="resnet10_w16",
        train_subset=0,
        batch_size=256,
        K=4096,
        lr=0.12,
        epochs=3,
        data_path="device",
        knn_feature="avgpool",
    ),
    # The cifar10_cpu preset: 3 epochs fit `make demo` in about 5 minutes.
    "cifar10_cpu": dict(
        arch="resnet10_w16",
        train_subset=0,
        batch_size=256,
        K=4096,
        lr=0.06,
        epochs=3,
        data_path="device",
        knn_feature="avgpool",
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| candidate | recipe | images/s | minutes | kNN random | kNN per epoch | points above random |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only:
        overrides = CANDIDATES[name]
        with tempfile.TemporaryDirectory() as out:
            cfg = make_config("cifar10_demo", data_root=args.data_root, output_dir=out, **COMMON, **overrides)
            tic = time.perf_counter()
            run = pretrain(cfg, progress=False)
            minutes = (time.perf_counter() - tic) / 60
        knn = [r["knn_top1"] for r in run.history]
        speed = sum(r["images_per_s"] for r in run.history[1:]) / (len(run.history) - 1)
        recipe = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(
            f"| {name} | {recipe} | {speed:.0f} | {minutes:.1f} | {knn[0]:.1f} | "
            f"{' / '.join(f'{v:.1f}' for v in knn[1:])} | {knn[-1] - knn[0]:+.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
