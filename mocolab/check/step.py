"""The training step alone, timed as a run takes it, and compared across ways of running it.

    eager = timed_step(cfg, device, warmup=10, steps=50)
    graphs = timed_step(dataclasses.replace(cfg, compile="graphs"), device, warmup=10, steps=50)
    gradient_difference(graphs.grads, eager.grads)

What `make gpu-check`'s step rows and `benchmarks/step_time.py` measure: the views are fixed random images already
on the device (the data left out), the step is `train.build_trainer`'s (the config's precision, compile, fused SGD,
split BN). Every way starts from the same weights (seed 0) and images, so the first step's loss and gradients are
comparable: a compiled step that computes the wrong gradients shows here (the loss alone did not: KeyQueue.snapshot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..run.device import synchronize
from .operations import Operations

# The ways to run a step, as the benchmark's and the check's options name them: their Config.compile.
COMPILE_WAYS = {"none": False, "encoders": True, "model": "model", "graphs": "graphs"}


@dataclass
class StepTiming:
    batch_size: int  # images per step (the config's global batch)
    seconds: float  # per step, after the warm-up
    first_seconds: float  # the first step, which compiles (and autotunes)
    loss: float  # of the first step
    grads: dict[str, torch.Tensor]  # the first step's gradients of the query encoder, on the CPU, in fp32
    operations: int | None  # of one step, counted eagerly (None when compiled: a dispatch mode would change it)
    precision: str  # what the step computed in: "fp32", "bfloat16", "float16"


def timed_step(cfg, device: torch.device, warmup: int, steps: int) -> StepTiming:
    """cfg's training step on the device, `warmup` steps (the first compiles), then `steps` timed."""
    from ..train import build_trainer

    torch.manual_seed(0)
    trainer = build_trainer(cfg, device, 1, warmup + steps + 1)
    g = torch.Generator(device=device).manual_seed(0)
    x_q, x_k = torch.randn(2, cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device, generator=g)
    tic = time.perf_counter()
    out = trainer.step(x_q, x_k, 0)
    # Read before the next step: under CUDA graphs its replay overwrites this step's outputs and gradients.
    loss = out.loss.item()
    first_seconds = time.perf_counter() - tic
    grads = {name: p.grad.detach().float().cpu() for name, p in trainer.model.query_encoder.named_parameters()}
    for step in range(1, warmup):
        trainer.step(x_q, x_k, step)
    operations = None
    if not cfg.compile:
        with Operations() as ops:
            trainer.step(x_q, x_k, warmup)
        operations = ops.computing
    else:
        trainer.step(x_q, x_k, warmup)  # so that every way times the same steps of the schedule
    synchronize(device)
    tic = time.perf_counter()
    for step in range(warmup + 1, warmup + 1 + steps):
        trainer.step(x_q, x_k, step)
    synchronize(device)
    seconds = (time.perf_counter() - tic) / steps
    dtype = trainer.autocast_dtype
    precision = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    return StepTiming(cfg.batch_size, seconds, first_seconds, loss, grads, operations, precision)


def gradient_difference(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """|grads - reference| / |reference|, every parameter's gradient in one vector.

    Float rounding makes it about 1e-3 between eager and inductor in fp32 (cifar10_demo's ResNet-18 on the CPU; in
    fp64 the two agree to 3e-14), where a compiled step that back-propagated through the wrong queue was 0.3 off."""
    diff = sum((grads[name] - g).pow(2).sum() for name, g in reference.items())
    norm = sum(g.pow(2).sum() for g in reference.values())
    return (diff / norm).sqrt().item()


def cudagraph_skips() -> int:
    """How many graphs inductor has run without CUDA graphs in this process, although compiled to use them (an
    operation or input it cannot capture; `TORCH_LOGS=cudagraphs` prints why): compile="graphs" then runs as
    "model" does."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]
