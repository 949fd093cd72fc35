"""Seconds per MoCo training step of a preset on this machine, data loading excluded, eager and compiled.

    python benchmarks/step_time.py --preset cifar10_demo --batch-size 64 --steps 10
    python benchmarks/step_time.py --preset cifar10_demo --batch-size 512 --gpus 1 --compile none,encoders,model,graphs
    python benchmarks/step_time.py --preset imagenet_mocov2 --batch-size 32 --gpus 1

Times forward (q and k), InfoNCE, backward and the SGD step on random images
of the preset's size, after warm-up steps (which compile); prints seconds per step, images/s and, eager,
the operations of one step (views left out; each a kernel launch on a GPU; counted by
mocolab.check.operations). Pair it with the `images_per_s` column of a run's metrics.csv, which includes
the data pipeline.

--compile lists the ways to run the step, each from the same initial weights and images, side by side:
    none       eager
    encoders   both encoders compiled in place: what compile=True does
    model      the whole MoCo forward compiled as one graph (momentum update, shuffle BN, both encoders,
               InfoNCE, enqueue; tests/test_moco.py checks it has no graph break)
    graphs     the same with mode="reduce-overhead": CUDA graphs replay the step's kernels without
               launching them one by one (GPU only)
Each row gives the difference of its first step's loss and gradients from eager's (the same weights, images
and queue; later steps drift apart as float rounding compounds through SGD): the loss alone missed a compiled
step whose gradients were 30% off (KeyQueue.snapshot). The steps are those of a run (mocolab.check.step).
"""

import argparse
import dataclasses

import torch

import mocolab
from mocolab.check.step import COMPILE_WAYS as WAYS
from mocolab.check.step import gradient_difference, timed_step
from mocolab.run.device import resolve_device, resolve_precision


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10_demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=-1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", default="none", help=f"comma-separated, of {', '.join(WAYS)}")
    args = parser.parse_args()
    ways = args.compile.split(",")
    if unknown := set(ways) - set(WAYS):
        parser.error(f"unknown --compile {sorted(unknown)}; choose from {', '.join(WAYS)}")

    base = mocolab.make_config(args.preset)
    B = args.batch_size
    cfg = mocolab.make_config(
        args.preset, batch_size=B, K=max(1, base.K // B) * B, gpus=args.gpus, precision=args.precision
    )
    device = resolve_device(cfg.gpus)
    dtype = resolve_precision(cfg.precision, device)
    if "graphs" in ways and device.type != "cuda":
        parser.error("--compile graphs (CUDA graphs) needs a GPU")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"{args.preset} ({cfg.arch}, {cfg.image_size} px), batch {B}, {name}, {str(dtype or 'fp32')}")
    eager = None
    for way in ways:
        timing = timed_step(dataclasses.replace(cfg, compile=WAYS[way]), device, args.warmup, args.steps)
        eager = timing if way == "none" else eager
        text = f"  {way:9s} {timing.seconds:.4f} s/step, {B / timing.seconds:.1f} images/s"
        text += f", first step {timing.first_seconds:.1f} s"
        if timing.operations is not None:
            text += f", {timing.operations} operations a step"
        if eager is not None and way != "none":
            text += (
                f"; first step vs eager: loss {abs(timing.loss - eager.loss):.1e}, "
                f"gradients {gradient_difference(timing.grads, eager.grads):.1e} of their norm"
            )
        print(text)


if __name__ == "__main__":
    main()
