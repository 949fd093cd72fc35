"""`pretrain(config)`: the MoCo v2 training loop, on the CPU, one GPU or several processes.

One loop serves every layout: the only process, or one rank of a distributed
run (DDP on the query encoder, a DistributedSampler, all-reduced metrics).
What a run writes, and where, is `runlog`'s business.
"""
from __future__ import annotations

import inspect
import math
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed as dist_
from .config import Config, ConfigError, check_world
from .data import classes_of, eval_loader, knn_datasets, pretrain_dataset, pretrain_loader
from .device_data import device_batches, device_knn_sets
from .jpeg_data import jpeg_batches
from .evaluate import extract_features, knn_accuracy
from .models import build_encoder
from .moco import MoCo
from .runlog import Run, end_of_epoch, start_outputs
from .schedule import cosine_schedule


# ----------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------

def resolve_device(gpus: int) -> torch.device:
    """gpus -1: a GPU if present, else CPU; 0: CPU; N: this process's GPU of N. Fails before any work."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == -1:
        return torch.device("cuda", dist_.local_rank()) if available else torch.device("cpu")
    if gpus == 0:
        return torch.device("cpu")
    if available == 0:
        raise ConfigError(f"gpus={gpus} but no CUDA GPU is visible to torch; use gpus=0 to train on the CPU")
    if gpus > available:
        raise ConfigError(f"gpus={gpus} but only {available} GPU(s) are visible; lower gpus")
    return torch.device("cuda", dist_.local_rank())  # this process's GPU


def resolve_precision(precision: str, device: torch.device):
    """Autocast dtype, or None for fp32. auto: bf16 on a GPU that supports it, else fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(f"precision={precision!r} needs a GPU; use 'fp32' or 'auto' on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_model(cfg: Config, world: int = 1) -> MoCo:
    """The MoCo module of a config for one of `world` processes; randomly initialised.

    bn_splits counts BN groups in the global batch, so each process splits its
    share into bn_splits / world (one GPU of eight: plain BN over its 32 images).
    """
    encoder = build_encoder(cfg.arch, cifar_stem=cfg.cifar_stem, head=cfg.head, dim=cfg.dim,
                            bn_splits=1 if cfg.sync_bn else cfg.bn_splits // world)
    model = MoCo(encoder, K=cfg.K, m=cfg.m, T=cfg.T, dim=cfg.dim, symmetric=cfg.symmetric,
                 shuffle_bn=cfg.shuffle_bn and not cfg.sync_bn)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if cfg.sync_bn else model


def build_optimizer(model: MoCo, cfg: Config) -> torch.optim.SGD:
    """SGD on the query encoder only; weight decay on every parameter, as in the official code.

    On a GPU the fused kernel updates all parameters at once (the same arithmetic, fewer launches).
    """
    on_gpu = next(model.parameters()).is_cuda
    return torch.optim.SGD(model.encoder_q.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, fused=True if on_gpu else None)


def data_path(cfg: Config, device: torch.device) -> str:
    """The data path a run takes: cfg.data_path, with "auto" resolved for the device and data."""
    if cfg.data_path != "auto":
        return cfg.data_path
    if device.type != "cuda":
        return "cpu"  # the reference pipeline: loader workers run beside the CPU's training step
    return "jpeg" if cfg.dataset == "imagefolder" and cfg.image_size > 96 else "device"


def lr_schedule(cfg: Config, steps_per_epoch: int):
    """The per-step learning rates of a run (plot it before training)."""
    return cosine_schedule(cfg.lr, cfg.epochs, steps_per_epoch, cfg.warmup_epochs,
                           per_step=cfg.lr_schedule == "cosine_step")


def steps_per_epoch(cfg: Config, num_images: int) -> int:
    full = num_images // cfg.batch_size
    return min(full, cfg.steps_per_epoch) if cfg.steps_per_epoch else full


# ----------------------------------------------------------------------------
# One epoch and the kNN monitor
# ----------------------------------------------------------------------------

def train_one_epoch(model, loader, optimizer, lrs, start_step, num_steps, device, autocast_dtype,
                    scaler, cfg: Config, epoch: int, steps_log: list, writer=None, progress=True) -> dict:
    """Train for num_steps batches; returns the epoch means (one host sync per log_every steps)."""
    model.train()  # both encoders: BN uses batch statistics for keys too
    totals = torch.zeros(4, device=device)  # running sums of loss, acc, pos_sim, neg_sim
    bar = tqdm(total=num_steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext())
    queue = getattr(model, "module", model).queue  # under DDP, the MoCo module's
    for i, ((x_q, x_k), _) in enumerate(loader):
        if i == num_steps:
            break
        step = start_step + i
        for group in optimizer.param_groups:
            group["lr"] = lrs[step]
        layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        x_q = x_q.to(device, non_blocking=True, memory_format=layout)
        x_k = x_k.to(device, non_blocking=True, memory_format=layout)
        with autocast:
            out = model(x_q, x_k)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        stats = torch.stack([out.loss.detach(), out.acc, out.pos_sim, out.neg_sim])
        totals += stats
        if (step + 1) % cfg.log_every == 0 or i == num_steps - 1:
            # The global batch's means; the queue (and its key ages, read only here) is the same on every rank.
            loss, acc, pos, neg, age, oldest, random_keys = dist_.all_reduce_mean(
                torch.cat([stats, queue.age_stats()])).tolist()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step + 1}: lower lr, or use "
                                         f"precision='fp32'; checkpoint_last.pt holds the last good epoch")
            row = {"step": step + 1, "epoch": round(epoch + (i + 1) / num_steps, 4), "lr": float(lrs[step]),
                   "loss": loss, "acc": acc, "pos_sim": pos, "neg_sim": neg,
                   "key_age": age, "key_age_max": oldest, "random_keys": random_keys}
            steps_log.append(row)
            if writer is not None:
                for key in ("loss", "acc", "pos_sim", "neg_sim", "lr", "key_age", "random_keys"):
                    writer.add_scalar(f"step/{key}", row[key], step + 1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{100 * acc:.1f}%")
        bar.update(1)
    bar.close()
    loss, acc, pos, neg = dist_.all_reduce_mean(totals / num_steps).tolist()
    return {"loss": loss, "acc": acc, "pos_sim": pos, "neg_sim": neg}


def knn_monitor(encoder, bank_loader, test_loader, num_classes: int, cfg: Config, device,
                progress=True) -> float:
    """kNN top-1 (%) of the test set against the bank, on head or backbone features (the demo's monitor)."""
    bank_f, bank_y = extract_features(encoder, bank_loader, cfg.knn_feature, device, progress=progress)
    test_f, test_y = extract_features(encoder, test_loader, cfg.knn_feature, device, progress=progress)
    k = min(cfg.knn_k, len(bank_f))
    return knn_accuracy(test_f, test_y, bank_f, bank_y, num_classes, ks=(k,), T=cfg.knn_t)[k]["top1"]


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def pretrain(cfg: Config, progress: bool = True) -> Run:
    """Pretrain MoCo as `cfg` says, writing config, metrics and checkpoints to cfg.output_dir.

    With gpus > 1 (or gpus=0 and processes > 1) this starts one worker process per
    GPU (per CPU process) through torch's elastic launcher and returns when they end;
    under torchrun it is the worker itself.
    """
    if cfg.world_size > 1 and not dist_.launched_by_torchrun() and not dist_.is_distributed():
        from .launch import launch  # the parent of a multi-process run
        return launch(cfg, progress)
    return train_worker(cfg, progress)


def preflight(cfg: Config) -> tuple[torch.device, dict | None]:
    """Every check that can fail before training: output dir, checkpoint, device, precision."""
    last = Path(cfg.output_dir) / "checkpoint_last.pt"
    if not cfg.resume and last.exists():
        raise ConfigError(f"{cfg.output_dir} already holds a run (checkpoint_last.pt); pass resume=True "
                          f"to continue it, or choose another output_dir")
    saved = ckpt.load_checkpoint(last) if cfg.resume else None  # fails early when absent
    if saved is not None:
        ckpt.check_compatible(saved["config"], cfg.to_dict(), last)
    device = resolve_device(cfg.gpus)
    resolve_precision(cfg.precision, device)
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError("sync_bn=True needs GPUs (SyncBatchNorm runs on CUDA only); use shuffle BN on the CPU")
    return device, saved


def train_worker(cfg: Config, progress: bool = True, echo: bool = True) -> Run:
    """The training loop of one process (the only one, or one rank of a distributed run).

    echo: print a line per epoch (rank 0); the launcher relays log.txt instead.
    """
    device, saved = preflight(cfg)
    owns_group = dist_.launched_by_torchrun() and not dist_.is_distributed()
    if owns_group:
        dist_.init_process_group(use_cuda=device.type == "cuda")
    rank, world = dist_.rank(), dist_.world_size()
    check_world(cfg, world)
    main = rank == 0
    progress = progress and main
    autocast_dtype = resolve_precision(cfg.precision, device)
    out, last = Path(cfg.output_dir), Path(cfg.output_dir) / "checkpoint_last.pt"

    # Data first: a missing dataset should fail before minutes of model set-up.
    torch.manual_seed(cfg.seed)  # seeds the CPU and every GPU: the same initial weights on every rank
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    path = data_path(cfg, device)
    on_device = path != "cpu"  # batches come augmented, on the device, from a set_epoch(epoch) iterable
    if path == "cpu":
        train_set = pretrain_dataset(cfg)
    else:
        train_set = (device_batches if path == "device" else jpeg_batches)(cfg, device, rank, world)
    num_steps = steps_per_epoch(cfg, len(train_set))
    if num_steps == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(train_set)} training images")
    pin = device.type == "cuda"
    monitor = None
    if cfg.knn_every and main:
        monitor = (path == "device" and device_knn_sets(cfg, device)) or _knn_loaders(cfg, pin)

    model = build_model(cfg, world).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:  # in place, so state_dict keys (and checkpoints) stay those of the plain model
        model.encoder_q.compile()
        model.encoder_k.compile()
    step_model = model
    if world > 1:  # gradients of the query encoder are averaged over processes
        step_model = _ddp(model, device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    lrs = lr_schedule(cfg, num_steps)
    run = Run(out, cfg, model)
    start_epoch = 0
    if saved is not None:
        start_epoch = _restore(saved, model, optimizer, scaler, run, cfg, last)

    writer = start_outputs(cfg, device, autocast_dtype, num_steps, world, start_epoch, path) if main else None
    for epoch in tqdm(range(start_epoch, cfg.epochs), desc="pretrain", initial=start_epoch,
                      total=cfg.epochs, disable=not progress):
        tic = time.perf_counter()
        loader = (train_set.set_epoch(epoch) if on_device
                  else pretrain_loader(train_set, cfg, epoch, rank, world, pin_memory=pin))
        means = train_one_epoch(step_model, loader, optimizer, lrs, epoch * num_steps, num_steps, device,
                                autocast_dtype, scaler, cfg, epoch, run.steps, writer, progress)
        train_s = time.perf_counter() - tic
        last_step = (epoch + 1) * num_steps
        row = {"epoch": epoch + 1, "step": last_step, "lr": float(lrs[last_step - 1]),
               **means, "knn_top1": None, "train_s": round(train_s, 3), "knn_s": None,
               "images_per_s": round(num_steps * cfg.batch_size / train_s, 1)}
        if monitor and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            tic = time.perf_counter()
            row["knn_top1"] = knn_monitor(model.encoder_q, *monitor, cfg, device, progress)
            row["knn_s"] = round(time.perf_counter() - tic, 3)
        run.history.append(row)
        if main:
            end_of_epoch(run, row, optimizer, scaler, writer, echo)
        dist_.barrier()  # the other ranks wait for the kNN pass and the checkpoint
    if writer is not None:
        writer.close()
    if owns_group:
        torch.distributed.destroy_process_group()
    return run


def _ddp(model: MoCo, device) -> torch.nn.parallel.DistributedDataParallel:
    """DDP that does not broadcast buffers each step: the queue is identical on every rank
    already, and BN running statistics stay per rank (rank 0's are saved), as in the official code."""
    DDP = torch.nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})  # the name changed in torch 2.14
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def _knn_loaders(cfg: Config, pin: bool):
    bank_set, test_set = knn_datasets(cfg)
    return (eval_loader(bank_set, workers=cfg.workers, pin_memory=pin),
            eval_loader(test_set, workers=cfg.workers, pin_memory=pin), len(classes_of(bank_set)))


def _restore(saved: dict, model, optimizer, scaler, run: Run, cfg: Config, path) -> int:
    """Load a checkpoint into the run; returns the epoch to continue from."""
    ckpt.load_state(model, saved["model"], path)
    optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):  # empty when the saved run did not use fp16 loss scaling
        scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_state(saved["rng"])
    run.history, run.steps = saved["history"], saved["steps"]
    now = cfg.to_dict()
    changed = {k: (v, now[k]) for k, v in saved["config"].items() if k != "resume" and now.get(k) != v}
    if changed and dist_.is_main():
        warnings.warn(f"resuming {path.parent} with changed settings (checkpoint, now): {changed}",
                      stacklevel=3)
    return saved["epoch"]


