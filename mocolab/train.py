"""`pretrain(config)`: the MoCo v2 training loop, on the CPU, one GPU or several processes.

One loop serves every layout: the only process, or one rank of a distributed
run (DDP on the query encoder, every rank its share of the global batch,
all-reduced metrics). Where the batches come from is `mocolab.data`'s
business, the job's lifecycle (preflight, processes, output folder)
`mocolab.run.job`'s, and what a run writes `runlog`'s.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .run import checkpoint as ckpt
from . import data
from . import distributed as dist_
from .run import job, preemption
from . import runlog
from .config import MODEL_FIELDS, Config, ConfigError, check_world, config_from_dict
from .run import unreadable
from .run.device import resolve_precision
from .evaluate import extract_features, extract_layers, knn_accuracy
from .models import build_encoder
from .moco import MoCo
from .online_probe import OnlineProbe
from .runlog import Run, end_of_epoch, epoch_line, restore_outputs, start_outputs
from .schedule import lr_schedule as schedule_array


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

    def step(self, x_q: torch.Tensor, x_k: torch.Tensor, step: int):
        """One SGD step at the schedule's lr; returns the MoCoOutput (loss, acc, similarities)."""
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lrs[step])  # a Python float: checkpoints hold no NumPy values
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x_q, x_k = x_q.contiguous(memory_format=layout), x_k.contiguous(memory_format=layout)
        device_type = x_q.device.type
        autocast = torch.autocast(device_type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
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
    if cfg.compile:  # in place, so state_dict keys (and checkpoints) stay those of the plain model
        model.query_encoder.compile()
        model.key_encoder.compile()
    autocast_dtype = resolve_precision(cfg.precision, device)
    return Trainer(
        model=model,
        step_model=_ddp(model, device) if world > 1 else model,
        optimizer=build_optimizer(model, cfg),
        scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16),
        lrs=lr_schedule(cfg, num_steps),
        autocast_dtype=autocast_dtype,
        channels_last=cfg.channels_last,
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


@dataclass
class Pause:
    """What happens between two steps: the position saved every cfg.checkpoint_every_steps steps, and on a stop
    signal saved and the run stopped (`Preempted`), all processes after the same step."""

    run: Run
    trainer: Trainer
    folder: job.RunFolder
    stop: preemption.StopSignals
    num_steps: int
    started: float  # when this sitting's epoch started (perf_counter): the position keeps the epoch's seconds

    def __call__(self, epoch: int, done: int, totals: torch.Tensor, probe_totals: torch.Tensor | None) -> None:
        signal_name = self.stop.requested()
        every = self.run.config.checkpoint_every_steps
        if done == self.num_steps or not (signal_name or (every and (epoch * self.num_steps + done) % every == 0)):
            return  # an epoch's last step: its end writes the checkpoint, then `after_epoch` stops
        position = {
            "step": done,
            "world": dist_.world_size(),
            "totals": dist_.all_gather_cat(totals[None]).cpu(),  # every process's sums: the epoch means need all
            "probe_totals": None if probe_totals is None else probe_totals.cpu(),
            "seconds": self.seconds(),
        }
        why = f"stopped by {signal_name}" if signal_name else f"checkpoint_every_steps={every}"
        runlog.save_position(self.run, epoch, position, self.trainer.optimizer, self.trainer.scaler, self.folder, why)
        dist_.barrier()
        if signal_name:
            self.stopped(signal_name, f"step {done} of epoch {epoch + 1}")

    def after_epoch(self, epoch: int) -> None:
        """At an epoch's end (its checkpoint written): stop if a stop signal came."""
        signal_name = self.stop.requested()
        if signal_name and epoch + 1 < self.run.config.final_epoch:
            self.folder.log(f"stopped by {signal_name} at the end of epoch {epoch + 1} (checkpoint_last.pt holds it)")
            self.stopped(signal_name, f"the end of epoch {epoch + 1}")

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def stopped(self, signal_name: str, where: str):
        raise preemption.Preempted(
            f"stopped by {signal_name} after {where}: {self.folder.path / 'checkpoint_last.pt'} holds it, and "
            f"resume=True (python -m mocolab ... resume=True) continues from there exactly"
        )


def _continued(batches, epoch: int, start: int, rng: dict):
    """The batches of `epoch` from step `start` on, with torch's RNG where the saved run had it: set after the
    epoch's loader has started, since starting one draws a seed from torch's generator (as the uninterrupted
    run's loader did at the epoch's start, before the state was saved)."""
    stream = iter(batches.epoch(epoch, start))
    first = next(stream, None)
    ckpt.set_rng_state(rng)
    if first is not None:
        yield first
        yield from stream


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


def knn_monitor(encoder, monitor: data.KnnSets, cfg: Config, device, progress: bool = True) -> float:
    """kNN top-1 (%) of the test set against the bank, on head or pooled features (the demo's monitor)."""
    return monitor_readings(encoder, monitor, cfg, device, progress=progress)["knn_top1"]


def monitor_readings(
    encoder, monitor: data.KnnSets, cfg: Config, device, probe: OnlineProbe | None = None, progress: bool = True
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


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


def pretrain(cfg: Config, progress: bool = True, checked: job.Checked | None = None) -> Run:
    """Pretrain MoCo as `cfg` says, writing config, metrics and checkpoints to cfg.output_dir.

    With gpus > 1 (or gpus=0 and processes > 1) this starts one worker process per
    GPU (per CPU process) and returns when they end; under torchrun it is the worker itself.
    checked: what `preflight(cfg)` returned, when the caller checked first (the checkpoint is not read again).
    """
    return job.run(cfg, train_worker, preflight, load_run, progress, checked)


def preflight(cfg: Config) -> job.Checked:
    """Every check that can fail before training: output dir, checkpoint, device, precision.
    Returns what they found (the device, the checkpoint to resume), for `pretrain(cfg, checked=...)`."""
    checked = job.open_run(cfg, "pretraining")
    device, saved = checked.device, checked.saved
    if saved is not None:
        ckpt.check_compatible(saved["config"], cfg.to_dict(), MODEL_FIELDS, Path(cfg.output_dir) / "checkpoint_last.pt")
    resolve_precision(cfg.precision, device)
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError("sync_bn=True needs GPUs (SyncBatchNorm runs on CUDA only); use shuffle BN on the CPU")
    return checked


def train_worker(cfg: Config, progress: bool = True, echo: bool = True, checked: job.Checked | None = None) -> Run:
    """The training loop of one process (the only one, or one rank of a distributed run).

    echo: print a line per epoch (rank 0); the launcher relays log.txt instead. checked: this process's
    preflight, when job.run made it.
    """
    _, device, saved, _ = checked if checked is not None else preflight(cfg)
    with (
        job.process_group(device) as (rank, world),
        unreadable.recording(Path(cfg.output_dir) / runlog.UNREADABLE),
        preemption.StopSignals(preemption.signal_names(cfg.stop_signals)) as stop,
    ):
        if world != cfg.world_size:  # torchrun chose the world: the config checked its own (config.check_world)
            check_world(cfg, world)
        main = rank == 0
        progress = progress and main
        folder = job.RunFolder(cfg.output_dir, main, echo)
        folder.remove_stale_temporaries()

        # Data first: a missing dataset should fail before minutes of model set-up.
        torch.manual_seed(cfg.seed)  # seeds the CPU and every GPU: the same initial weights on every rank
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        batches, monitor = data.run_data(cfg, device, rank, world, monitor=bool(cfg.knn_every and main))
        num_steps = steps_per_epoch(cfg, len(batches))  # >= 1: every path refuses fewer images than a batch

        trainer = build_trainer(cfg, device, world, num_steps)
        probe = (
            OnlineProbe(trainer.model.query_encoder.backbone.out_dim, monitor.num_classes, device)
            if cfg.online_probe and monitor
            else None
        )
        run = Run(folder.path, cfg, trainer.model, probe=probe)
        start_epoch = _restore(saved, trainer, run, cfg) if saved is not None else 0
        position = _saved_position(saved, world)
        start_step = start_epoch * num_steps + (position["step"] if position else 0)
        writer = (
            start_outputs(folder, cfg, device, trainer.autocast_dtype, num_steps, world, start_step, batches.path)
            if main
            else None
        )
        if main and saved is not None:
            restore_outputs(run, saved, folder)
        runlog.note_unreadable(folder)  # what the data set-up skipped (the device cache, the jpeg path's check)
        if monitor and start_epoch == 0 and position is None:  # the random network's kNN: every curve's baseline
            run.history.append(_random_network_row(trainer, monitor, cfg, device, writer, folder, progress))
        dist_.barrier()
        for epoch in tqdm(
            range(start_epoch, cfg.final_epoch),
            desc="pretrain",
            initial=start_epoch,
            total=cfg.final_epoch,
            disable=not progress,
        ):
            pause = Pause(run, trainer, folder, stop, num_steps, time.perf_counter())
            if position is not None:  # resumed inside this epoch: the rest of it, and the seconds spent before
                stream = _continued(batches, epoch, position["step"], saved["rng"])
                pause.started -= position["seconds"]
            else:
                stream = batches.epoch(epoch)
            done_before, seconds_before = (position["step"], position["seconds"]) if position else (0, 0.0)
            means = train_one_epoch(
                trainer, stream, cfg, epoch, num_steps, run.steps, writer, progress, probe, position, pause
            )
            position, train_s = None, pause.seconds()
            last_step = (epoch + 1) * num_steps
            row = {
                "epoch": epoch + 1,
                "step": last_step,
                "lr": float(trainer.lrs[last_step - 1]),
                **means,
                "knn_top1": None,
                "train_s": round(train_s, 3),
                "knn_s": None,
                "images_per_s": round((num_steps - done_before) * cfg.batch_size / (train_s - seconds_before), 1),
            }
            if monitor and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.final_epoch):
                tic = time.perf_counter()
                row.update(monitor_readings(trainer.model.query_encoder, monitor, cfg, device, probe, progress))
                row["knn_s"] = round(time.perf_counter() - tic, 3)
            bad = ckpt.first_non_finite(trainer.model.state_dict())  # never saved over the last good checkpoint
            if bad is not None:
                raise FloatingPointError(
                    f"the weights hold NaN or Inf after epoch {epoch + 1} ({bad}): lower lr; checkpoint_last.pt, "
                    f"if the run wrote one, still holds its last good state (it is not overwritten)"
                )
            run.history.append(row)
            if main:
                end_of_epoch(run, row, trainer.optimizer, trainer.scaler, writer, folder)
            dist_.barrier()  # the other ranks wait for the kNN pass and the checkpoint
            pause.after_epoch(epoch)
        if writer is not None:
            writer.close()
    return run


def _random_network_row(trainer: Trainer, monitor, cfg: Config, device, writer, folder, progress: bool) -> dict:
    """metrics.csv's epoch 0: the kNN monitor on the encoder before its first step (same bank and test set)."""
    tic = time.perf_counter()
    top1 = knn_monitor(trainer.model.query_encoder, monitor, cfg, device, progress)
    row = {
        "epoch": 0,
        "step": 0,
        "lr": None,
        "loss": None,
        "acc": None,
        "pos_sim": None,
        "neg_sim": None,
        "knn_top1": top1,
        "train_s": None,
        "knn_s": round(time.perf_counter() - tic, 3),
        "images_per_s": None,
    }
    writer.add_scalar("epoch/knn_top1", top1, 0)
    folder.log(epoch_line(row, cfg))
    return row


def _saved_position(saved: dict | None, world: int) -> dict | None:
    """The position inside an epoch where the saved run stopped (None: at an epoch's end), checked against
    this run's processes: each continues its own share of the epoch."""
    position = (saved or {}).get("position")
    if position is not None and position["world"] != world:
        raise ckpt.CheckpointError(
            f"checkpoint_last.pt stopped inside epoch {saved['epoch'] + 1} with {position['world']} processes; "
            f"resume it with {position['world']} (each continues its own share of the epoch), or resume a kept "
            f"checkpoint_NNNN.pt of an epoch's end"
        )
    return position


def _restore(saved: dict, trainer: Trainer, run: Run, cfg: Config) -> int:
    """Load a checkpoint into the run; returns the epoch to continue from."""
    path = Path(cfg.output_dir) / "checkpoint_last.pt"
    ckpt.load_state(trainer.model, saved["model"], path)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):  # empty when the saved run did not use fp16 loss scaling
        trainer.scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_state(saved["rng"])
    if run.probe is not None and saved.get("probe"):  # None: the saved run had no probe; this one starts it
        run.probe.load_state_dict(saved["probe"])
    run.history, run.steps = saved["history"], saved["steps"]
    before, now = config_from_dict(saved["config"]).to_dict(), cfg.to_dict()
    changed = {k: (v, now[k]) for k, v in before.items() if k != "resume" and now.get(k) != v}
    if changed and dist_.is_main():
        warnings.warn(f"resuming {path.parent} with changed settings (checkpoint, now): {changed}", stacklevel=3)
    return saved["epoch"]


def load_run(output_dir: str | Path) -> Run:
    """A finished (or interrupted) run read back from its output directory's checkpoint_last.pt."""
    path = Path(output_dir) / "checkpoint_last.pt"
    state = ckpt.load_pretraining(path)
    cfg = config_from_dict(state["config"])
    model = build_model(dataclasses.replace(cfg, sync_bn=False))  # same tensors as SyncBatchNorm
    ckpt.load_state(model, state["model"], path)
    return Run(Path(output_dir), cfg, model.to(torch.device("cpu")), state["history"], state["steps"])
