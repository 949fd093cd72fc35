"""`pretrain(config)`: a MoCo v2 pretraining run, on the CPU, one GPU or several processes.

The loop itself (one step, one epoch, the kNN monitor) is `mocolab.train`'s. This module keeps the run around
it: the checks before anything is written (`preflight`), the processes (`mocolab.run.job`), the output folder
and what a run writes (`runlog`), resuming from a checkpoint exactly, and stopping on a signal between two steps
(`Pause`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed as dist_
from . import runlog
from .config import MODEL_FIELDS, Config, ConfigError, check_world, config_from_dict
from .data import run_data
from .run import checkpoint as ckpt
from .run import job, preemption, unreadable
from .run.device import resolve_precision
from .background_monitor import BackgroundMonitor
from .runlog import Run, end_of_epoch, epoch_line, late_reading, restore_outputs, start_outputs
from .online_probe import OnlineProbe
from .train import Trainer, build_model, build_trainer, knn_monitor, monitor_readings, steps_per_epoch, train_one_epoch


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
        batches, monitor = run_data(cfg, device, rank, world, monitor=bool(cfg.knn_every and main))
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
            if monitor and position is None and _pending(run.history, start_epoch, cfg):  # see background_monitor
                rng = ckpt.rng_state()  # a loader's start would draw from it: the run goes on as if never stopped
                _read_in_line(run.history[-1], trainer, monitor, cfg, device, probe, progress)
                ckpt.set_rng_state(rng)
                late_reading(run, run.history[-1], writer, folder, "read on resuming, from the same weights")
        beside = _background_monitor(cfg, monitor, device)
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
            pause = Pause(run, trainer, folder, stop, num_steps, time.perf_counter(), beside, writer)
            if position is not None:  # resumed inside this epoch: the rest of it, and the seconds spent before
                stream = _continued(batches, epoch, position["step"], saved["rng"])
                pause.started -= position["seconds"]
            else:
                stream = batches.epoch(epoch)
            done_before, seconds_before = (position["step"], position["seconds"]) if position else (0, 0.0)
            with contextlib.closing(stream):  # on a stop or a crash too: a thread making batches ahead ends here
                means = train_one_epoch(
                    trainer, stream, cfg, epoch, num_steps, run.steps, writer, progress, probe, position, pause
                )
            position, train_s = None, pause.seconds()
            pause.settle()  # the last epoch's reading, if it was read in the background: into its row first
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
            if monitor and _due(epoch + 1, cfg):
                # The last epoch's, or before a stop, is read in line: the run's last checkpoint holds every reading.
                if beside is not None and epoch + 1 < cfg.final_epoch and not stop.requested():
                    beside.start(trainer.model.query_encoder, probe, row)
                else:
                    _read_in_line(row, trainer, monitor, cfg, device, probe, progress)
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


def _due(epoch: int, cfg: Config) -> bool:
    """Whether the kNN monitor reads the end of `epoch` (1-based): every knn_every epochs, and the last."""
    return epoch % cfg.knn_every == 0 or epoch == cfg.final_epoch


def _read_in_line(row: dict, trainer: Trainer, monitor, cfg: Config, device, probe, progress: bool) -> None:
    tic = time.perf_counter()
    row.update(monitor_readings(trainer.model.query_encoder, monitor, cfg, device, probe, progress))
    row["knn_s"] = round(time.perf_counter() - tic, 3)


def _pending(history: list[dict], epoch: int, cfg: Config) -> bool:
    """Whether the checkpoint of `epoch`'s end was written with that epoch's reading still in the background."""
    last = history[-1] if history else None
    return epoch > 0 and last is not None and last["epoch"] == epoch and last["knn_top1"] is None and _due(epoch, cfg)


def _background_monitor(cfg: Config, monitor, device) -> BackgroundMonitor | None:
    """The monitor in a thread (cfg.knn_background), or None: read in line. Only kNN sets held on the device
    qualify: a loader's start draws from torch's generator, which a thread would do at a moment no resume can
    repeat."""
    wanted = cfg.knn_background == 1 or (cfg.knn_background == -1 and device.type == "cuda")
    if not (monitor and wanted):
        return None
    if hasattr(monitor.bank, "dataset"):  # loaders (data.knn_sets): the images are resized for the monitor
        if cfg.knn_background == 1:
            warnings.warn(
                "knn_background=1 reads the kNN monitor in the background only when its sets are held on the "
                "device (data_path='device', images of image_size pixels); this run reads it in line",
                stacklevel=3,
            )
        return None

    def read(encoder, probe_copy) -> dict:
        return monitor_readings(encoder, monitor, cfg, device, probe_copy, progress=False)

    return BackgroundMonitor(read, device)


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


# ----------------------------------------------------------------------------
# Between two steps: saving the position, stopping on a signal
# ----------------------------------------------------------------------------


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
    beside: BackgroundMonitor | None = None  # the kNN monitor in the background, whose reading a save waits for
    writer: object = None  # rank 0's TensorBoard writer, for a reading that lands late

    def settle(self) -> None:
        """The reading in the background, if one is in flight: waited for, and written into its row and outputs."""
        row = self.beside.finish() if self.beside is not None else None
        if row is not None:
            late_reading(self.run, row, self.writer, self.folder, "read beside the next epoch's steps")

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
        self.settle()  # a checkpoint holds every reading of the epochs before it
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
    with contextlib.closing(batches.epoch(epoch, start)) as stream:
        first = next(stream, None)
        ckpt.set_rng_state(rng)
        if first is not None:
            yield first
            yield from stream
