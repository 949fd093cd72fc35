"""Seconds per MoCo training step of a preset on this machine, data loading excluded.

    python benchmarks/step_time.py --preset cifar10_demo --batch-size 64 --steps 10
    python benchmarks/step_time.py --preset imagenet_mocov2 --batch-size 32 --gpus 1

Times forward (q and k), InfoNCE, backward and the SGD step on random images
of the preset's size, after warm-up steps; prints seconds per step, images/s and the operations of one step
(views left out; each a kernel launch on a GPU; counted by mocolab.check.operations).
Pair it with the `images_per_s` column of a run's metrics.csv, which includes
the data pipeline.
"""

import argparse
import time

import torch

import mocolab
from mocolab.check.operations import Operations
from mocolab.run.device import resolve_device, resolve_precision
from mocolab.train import build_optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10_demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=-1)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    base = mocolab.make_config(args.preset)
    B = args.batch_size
    cfg = mocolab.make_config(
        args.preset, batch_size=B, K=max(1, base.K // B) * B, gpus=args.gpus, precision=args.precision
    )
    device = resolve_device(cfg.gpus)
    dtype = resolve_precision(cfg.precision, device)
    model = mocolab.build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    x_q = torch.randn(B, 3, cfg.image_size, cfg.image_size, device=device)
    x_k = torch.randn_like(x_q)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step():
        with autocast:
            loss = model(x_q, x_k).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    with Operations() as ops:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - tic) / args.steps
    print(
        f"{args.preset} ({cfg.arch}, {cfg.image_size} px), batch {B}, {device}, "
        f"{str(dtype or 'fp32')}, {torch.get_num_threads()} CPU threads: "
        f"{seconds:.3f} s/step, {B / seconds:.1f} images/s, {ops.computing} operations a step"
    )


if __name__ == "__main__":
    main()
