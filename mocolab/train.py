"""The MoCo v2 training loop of one process: the model, the optimizer, the lr schedule, one step, one epoch, the
kNN monitor (docs/protocols.md section 1).

One loop serves every layout: the only process, or one rank of a distributed run (DDP on the query encoder,
every rank its share of the global batch, all-reduced metrics). It knows nothing of files, signals or
resuming: `mocolab.pretraining` runs it epoch after epoch and keeps the run (preflight, processes, checkpoints,
stop signals), and where the batches come from is `mocolab.data`'s business.
"""

from __future__ import annotations

import inspect
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed as dist_
from .config import Config, need
from .evaluate import extract_features, extract_layers, knn_accuracy
from .models import build_encoder
from .moco import MoCo
from .online_probe import OnlineProbe
from .run.device import resolve_precision
from .schedule import lr_schedule as schedule_array

if TYPE_CHECKING:
    from .data import KnnSets

# ----------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------


def build_model(cfg: Config, world: int = 1) -> MoCo:
    """The MoCo module of a config for one of `world` processes; randomly initialised.

    bn_splits counts BN groups in the global batch, so each process splits its
    share into bn_splits / world (one GPU of eight: plain BN over its 32 images).
    """
    encoder = build_encoder(
        cfg.arch,
        cifar_stem=cfg.cifar_stem,
        head=cfg.head,
        dim=cfg.dim,
        bn_splits=1 if cfg.sync_bn else cfg.bn_splits // world,
    )
    model = MoCo(
        encoder,
        K=cfg.K,
        m=cfg.m,
        T=cfg.T,
        dim=cfg.dim,
        symmetric=cfg.symmetric,
        shuffle_bn=cfg.shuffle_bn and not cfg.sync_bn,
    )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if cfg.sync_bn else model


def build_optimizer(model: MoCo, cfg: Config) -> torch.optim.SGD:
    """SGD on the query encoder only; weight decay on every parameter, as in the official code.

    On a GPU the fused kernel updates all parameters at once (the same arithmetic, fewer launches).
    """
    on_gpu = next(model.parameters()).is_cuda
    return torch.optim.SGD(
        model.query_encoder.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        fused=True if on_gpu else None,
    )


def compile_model(model: MoCo, how: bool | str) -> None:
    """torch.compile of a MoCo module in place, so that its state_dict keys (and checkpoints) stay those of the
    plain model. how (Config.compile): False, nothing; True, both encoders; "model", the whole forward as one
    graph (tests/test_moco.py: no graph break; its backward compiled with it); "graphs", that graph under CUDA
    graphs (mode="reduce-overhead"): the step's kernels replayed, not launched one by one (Trainer.step marks
    each step's start)."""
    if how is True:
        model.query_encoder.compile()
        model.key_encoder.compile()
    elif how in ("model", "graphs"):
        model.compile(mode="reduce-overhead" if how == "graphs" else None)


def lr_schedule(cfg: Config, steps_per_epoch: int) -> np.ndarray:
    """The per-step learning rates of a run (plot it before training): cosine to 0, docs/protocols.md."""
    return schedule_array(
        cfg.lr,
        cfg.epochs,
        steps_per_epoch,
        shape="cosine",
        per_step=cfg.lr_schedule == "cosine_step",
        warmup_epochs=cfg.warmup_epochs,
    )


def steps_per_epoch(cfg: Config, num_images: int) -> int:
    full = num_images // cfg.batch_size
    return min(full, cfg.steps_per_epoch) if cfg.steps_per_epoch else full


@dataclass
class Trainer:
    """The parts of one process's optimisation step, built once per run."""

    model: MoCo  # the module itself: checkpoints and the kNN monitor read it
    step_model: torch.nn.Module  # what a step calls: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lrs: np.ndarray  # the lr of every step of the run
    autocast_dtype: torch.dtype | None  # None: fp32
    channels_last: bool = False
    graphs: bool = False  # the model runs as CUDA graphs (compile="graphs")

    def step(self, x_q: torch.Tensor, x_k: torch.Tensor, step: int):
        """One SGD step at the schedule's lr; returns the MoCoOutput (loss, acc, similarities)."""
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lrs[step])  # a Python float: checkpoints hold no NumPy values
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x_q, x_k = x_q.contiguous(memory_format=layout), x_k.contiguous(memory_format=layout)
        device_type = x_q.device.type
        autocast = torch.autocast(device_type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        if self.graphs:  # a new step: the graphs may overwrite the last step's outputs, which nothing holds
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            out = self.step_model(x_q, x_k)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out


def build_trainer(cfg: Config, device: torch.device, world: int, num_steps: int) -> Trainer:
    model = build_model(cfg, world).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    need(
        cfg.compile != "graphs" or device.type == "cuda",
        f"compile='graphs' replays the step as CUDA graphs, which need a GPU, and this run is on {device}: "
        f"compile='model' compiles the same whole step without them",
    )
    compile_model(model, cfg.compile)
    autocast_dtype = resolve_precision(cfg.precision, device)
    return Trainer(
        model=model,
        step_model=_ddp(model, device) if world > 1 else model,
        optimizer=build_optimizer(model, cfg),
        scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16),
        lrs=lr_schedule(cfg, num_steps),
        autocast_dtype=autocast_dtype,
        channels_last=cfg.channels_last,
        graphs=cfg.compile == "graphs",
    )


def _ddp(model: MoCo, device) -> torch.nn.parallel.DistributedDataParallel:
    """DDP averages the query encoder's gradients over the processes.

    The official code keeps DDP's default, which broadcasts rank 0's buffers (the
    queue, BN running statistics) to every rank before each forward. mocolab
    turns that off: the queue is identical on every rank already (each enqueues
    the gathered global batch), and rank 0, whose model is saved and monitored,
    holds the same buffers either way; only the other ranks' unused BN running
    statistics differ. It saves broadcasting the queue every step (32 MB for the
    ImageNet recipe's 65536 x 128).
    """
    DDP = torch.nn.parallel.DistributedDataParallel
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DDP).parameters
        else {"broadcast_buffers": False}
    )  # the name changed in torch 2.14
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


# ----------------------------------------------------------------------------
# One epoch and the kNN monitor
# ----------------------------------------------------------------------------


def train_one_epoch(
    trainer: Trainer,
    batches,
    cfg: Config,
    epoch: int,
    num_steps: int,
    steps_log: list,
    writer=None,
    progress: bool = True,
    probe: OnlineProbe | None = None,
    position: dict | None = None,
    pause=None,
) -> dict:
    """Train for num_steps batches; returns the epoch means (one host sync per log_every steps).
    probe: the online linear probe (cfg.online_probe), stepped on each batch's query features and labels.
    position: where a saved run stopped inside this epoch (`batches` starts there): the epoch goes on from that
    step with its running sums. pause(epoch, steps done, totals, probe_totals), after each step: saves the
    position when due, and stops the run on a stop signal (`Pause`)."""
    trainer.step_model.train()  # both encoders: BN uses batch statistics for keys too
    device = next(trainer.model.parameters()).device
    first = position["step"] if position else 0
    totals = torch.zeros(4, device=device)  # running sums of loss, acc, pos_sim, neg_sim
    probe_totals = torch.zeros(2, device=device)  # the online probe's loss and accuracy on the query views
    if position:
        totals += position["totals"][dist_.rank()].to(device)
        if position["probe_totals"] is not None:
            probe_totals += position["probe_totals"].to(device)
    bar = tqdm(
        total=num_steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress
    )
    start = epoch * num_steps
    for i, ((x_q, x_k), labels) in enumerate(batches, start=first):
        if i == num_steps:
            break
        step = start + i
        out = trainer.step(x_q, x_k, step)
        stats = torch.stack([out.loss.detach(), out.acc, out.pos_sim, out.neg_sim])
        totals += stats
        if probe is not None:  # after the MoCo step, on its detached features: the step is the same without it
            probe_totals += probe.step(out.features, labels, float(trainer.lrs[step]) / cfg.lr)
        if (step + 1) % cfg.log_every == 0 or i == num_steps - 1:
            row = _log_step(trainer, stats, step, epoch + (i + 1) / num_steps, writer)
            steps_log.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{100 * row['acc']:.1f}%")
        bar.update(1)
        if pause is not None:
            pause(epoch, i + 1, totals, probe_totals if probe is not None else None)
    bar.close()
    loss, acc, pos, neg = dist_.all_reduce_mean(totals / num_steps).tolist()
    means = {"loss": loss, "acc": acc, "pos_sim": pos, "neg_sim": neg}
    if probe is not None:  # rank 0's alone: the probe lives there
        means["probe_loss"], means["probe_train_acc"] = (probe_totals / num_steps).tolist()
    return means


def _log_step(trainer: Trainer, stats: torch.Tensor, step: int, epoch: float, writer) -> dict:
    """A steps.csv row: the global batch's means; the queue (and its key ages, read only here) is the same
    on every rank. The one host sync of log_every steps."""
    loss, acc, pos, neg, age, oldest, random_keys = dist_.all_reduce_mean(
        torch.cat([stats, trainer.model.queue_stats()])
    ).tolist()
    if not math.isfinite(loss):
        fix = (
            "lower lr"
            if trainer.autocast_dtype is None
            else f"lower lr, or use precision='fp32' (this run computes in {trainer.autocast_dtype})"
        )
        back = (
            f"checkpoint_last.pt holds the last finished epoch ({int(epoch)}): resume=True continues from it"
            if epoch >= 1
            else "no epoch has finished yet, so there is no checkpoint to go back to"
        )
        raise FloatingPointError(f"loss is {loss} at step {step + 1}: {fix}; {back}")
    row = {
        "step": step + 1,
        "epoch": round(epoch, 4),
        "lr": float(trainer.lrs[step]),
        "loss": loss,
        "acc": acc,
        "pos_sim": pos,
        "neg_sim": neg,
        "key_age": age,
        "key_age_max": oldest,
        "random_keys": random_keys,
    }
    if writer is not None:
        for key in ("loss", "acc", "pos_sim", "neg_sim", "lr", "key_age", "random_keys"):
            writer.add_scalar(f"step/{key}", row[key], step + 1)
    return row


def knn_monitor(encoder, monitor: KnnSets, cfg: Config, device, progress: bool = True) -> float:
    """kNN top-1 (%) of the test set against the bank, on head or pooled features (the demo's monitor)."""
    return monitor_readings(encoder, monitor, cfg, device, progress=progress)["knn_top1"]


def monitor_readings(
    encoder, monitor: KnnSets, cfg: Config, device, probe: OnlineProbe | None = None, progress: bool = True
) -> dict:
    """The labelled readings of an epoch: kNN top-1 (%), and with the online probe its top-1 on the same test
    images, read from the same pass over them (a pass of its own would also draw a loader seed from torch's
    generator and so shift the run's later augmentations)."""
    bank_f, bank_y = extract_features(encoder, monitor.bank, cfg.knn_feature, device, progress=progress)
    layers = tuple(dict.fromkeys((cfg.knn_feature, "avgpool"))) if probe is not None else (cfg.knn_feature,)
    test, test_y = extract_layers(encoder, monitor.test, layers, device, progress, keep_on_device=True)
    test_f, test_y = F.normalize(test[cfg.knn_feature], dim=1), test_y.to(device)
    k = min(cfg.knn_k, len(bank_f))
    knn = knn_accuracy(test_f, test_y, bank_f, bank_y, monitor.num_classes, ks=(k,), T=cfg.knn_t)[k]["top1"]
    return {"knn_top1": knn} if probe is None else {"knn_top1": knn, "probe_top1": probe.top1(test["avgpool"], test_y)}
