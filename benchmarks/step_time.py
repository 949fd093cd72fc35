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
Each row gives the difference of its first step's loss from eager's (the same weights, images and queue;
later steps drift apart as float rounding compounds through SGD).
"""

import argparse
import time

import torch

import mocolab
from mocolab.check.operations import Operations
from mocolab.run.device import resolve_device, resolve_precision, synchronize
from mocolab.train import build_optimizer

WAYS = ("none", "encoders", "model", "graphs")


def prepared(model: mocolab.MoCo, way: str):
    """The callable a step runs for `way` (the module compiled in place keeps its state_dict keys)."""
    if way == "encoders":
        model.query_encoder.compile()
        model.key_encoder.compile()
    elif way in ("model", "graphs"):
        model.compile(mode="reduce-overhead" if way == "graphs" else None)
    return model


def timed_steps(cfg, device, dtype, way: str, warmup: int, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model = prepared(mocolab.build_model(cfg).to(device), way)
    optimizer = build_optimizer(model, cfg)
    g = torch.Generator(device=device).manual_seed(seed)
    x_q = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device, generator=g)
    x_k = torch.randn(x_q.shape, device=device, generator=g)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    losses = []

    def step():
        with autocast:
            loss = model(x_q, x_k).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    for _ in range(warmup):
        step()
    operations = None
    if way == "none":  # a step counted, eager only (a dispatch mode would change what compiled code runs)
        with Operations() as ops:
            step()
        operations = ops.computing
    else:
        step()  # so that every way times the same steps
    first = losses[0].float().item()  # from the same weights and queue for every way
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - tic) / steps, first, operations


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
    eager_loss = None
    for way in ways:
        seconds, loss, operations = timed_steps(cfg, device, dtype, way, args.warmup, args.steps)
        eager_loss = loss if way == "none" else eager_loss
        diff = "" if eager_loss is None or way == "none" else f", first loss vs eager {abs(loss - eager_loss):.1e}"
        ops = f", {operations} operations a step" if operations is not None else ""
        print(f"  {way:9s} {seconds:.4f} s/step, {B / seconds:.1f} images/s{ops}{diff}")


if __name__ == "__main__":
    main()
