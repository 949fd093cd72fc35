"""A pretraining run's output directory: everything about a run, written by rank 0 as it goes.

    config.json           the config, mocolab's git SHA, torch version, device, processes
    metrics.csv           one row per epoch: loss, lr, instance acc, similarities, kNN top-1, seconds (and with
                          online_probe the probe's loss, train accuracy and top-1 on the kNN test set)
    steps.csv             one row per `log_every` steps: loss, acc, similarities, lr, queue key ages
    log.txt               one line per epoch (relayed into the notebook by the launcher)
    unreadable.txt        the image files the run skipped, one "path<TAB>reason" line each (only when
                          there are any); log.txt and config.json's "unreadable_files" repeat them
    checkpoint_last.pt    written every epoch (atomically), every `checkpoint_every_steps` and on a stop
                          signal (with the position inside the epoch); `resume=True` continues from it
    checkpoint_NNNN.pt    kept every `checkpoint_every` epochs
    tb/                   TensorBoard logs

A crash loses at most the steps since the last checkpoint; a stop signal
(mocolab.run.preemption) loses nothing. The folder itself (config.json,
log.txt, atomic writes) is the job lifecycle's `job.RunFolder`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .run import checkpoint as ckpt
from .config import Config
from .run import unreadable
from .run.job import RunFolder
from .moco import MoCo
from .online_probe import OnlineProbe

UNREADABLE = "unreadable.txt"  # the run's record of skipped files (unreadable.recording; loader workers append)


@dataclass
class Run:
    """What `pretrain` returns: where the run lives, its model and its metric history."""

    output_dir: Path
    config: Config
    model: MoCo
    history: list[dict] = field(default_factory=list)  # one row per epoch (as in metrics.csv)
    steps: list[dict] = field(default_factory=list)  # one row per log_every steps (steps.csv)
    probe: OnlineProbe | None = None  # the online linear probe (cfg.online_probe), in rank 0


def start_outputs(
    folder: RunFolder,
    cfg: Config,
    device,
    autocast_dtype,
    num_steps: int,
    world: int,
    start_step: int,
    data_path: str = "cpu",
):
    """config.json, and the TensorBoard writer (rank 0 only), which drops what an interrupted sitting logged
    after start_step (the step the run continues from)."""
    skipped = folder.read_config().get("unreadable_files", {})  # a resumed run keeps what it skipped before
    folder.write_config(
        cfg,
        device,
        world,
        precision=str(autocast_dtype or "fp32"),
        steps_per_epoch=num_steps,
        data_path=data_path,
        unreadable_files=skipped,
    )
    from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to import

    return SummaryWriter(str(folder.path / "tb"), purge_step=start_step + 1)


def end_of_epoch(run: Run, row: dict, optimizer, scaler, writer, folder: RunFolder) -> None:
    """Log, checkpoint (atomically) and rewrite the CSVs: what a crash must not lose."""
    cfg, epoch = run.config, row["epoch"]
    _scalars(writer, row, ("loss", "acc", "pos_sim", "neg_sim", "knn_top1", "probe_top1", "images_per_s"))
    state = run_state(run, epoch, optimizer, scaler)
    folder.save(state)
    if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
        folder.save(state, f"checkpoint_{epoch:04d}.pt")
    folder.write_csv(run.history, "metrics.csv")
    folder.write_csv(run.steps, "steps.csv")
    note_unreadable(folder)
    folder.log(epoch_line(row, cfg))


def late_reading(run: Run, row: dict, writer, folder: RunFolder, how: str) -> None:
    """An epoch's kNN (and probe) reading that arrived after its row was written (background_monitor): its
    TensorBoard scalars, metrics.csv again, and a log line of its own saying `how` it was read."""
    _scalars(writer, row, ("knn_top1", "probe_top1"))
    folder.write_csv(run.history, "metrics.csv")
    folder.log(f"epoch {row['epoch']}/{run.config.epochs}{_readings(row)}  ({how}, {row['knn_s']:.1f} s)")


def _scalars(writer, row: dict, keys: tuple[str, ...]) -> None:
    """TensorBoard's epoch/<key> scalars of an epoch's row, those it holds."""
    for key in keys:
        if row.get(key) is not None:
            writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
    writer.flush()


def _readings(row: dict) -> str:
    """The labelled readings of a log line: "  kNN 37.00%  probe 32.50%", those the row holds."""
    text = f"  kNN {row['knn_top1']:.2f}%" if row["knn_top1"] is not None else ""
    return text + (f"  probe {row['probe_top1']:.2f}%" if row.get("probe_top1") is not None else "")


def run_state(run: Run, epoch: int, optimizer, scaler, position: dict | None = None) -> dict:
    """What checkpoint_last.pt holds: everything a resume needs to continue exactly.

    epoch: the epochs finished. position: where the run stopped inside epoch `epoch` + 1 (`save_position`);
    None at an epoch's end.
    """
    return {
        "kind": "pretraining",
        "model": run.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "position": position,
        "rng": ckpt.rng_state(),
        "config": run.config.to_dict(),
        "history": run.history,
        "steps": run.steps,
        "probe": run.probe.state_dict() if run.probe is not None else None,
    }


def save_position(run: Run, epoch: int, position: dict, optimizer, scaler, folder: RunFolder, why: str) -> None:
    """checkpoint_last.pt in the middle of epoch `epoch` + 1 (steps.csv with it), and a log line saying why.

    position: {"step": steps of the epoch done, "world": processes, "totals": every process's running sums of
    the epoch's means, "probe_totals": the online probe's}.
    """
    folder.save(run_state(run, epoch, optimizer, scaler, position))
    folder.write_csv(run.steps, "steps.csv")
    folder.log(
        f"{why}: saved step {position['step']} of epoch {epoch + 1} in checkpoint_last.pt; resume=True "
        f"continues from that step exactly"
    )


def note_unreadable(folder: RunFolder) -> None:
    """Copy the files skipped since the last call from the record into log.txt and config.json."""
    if not folder.main:
        return
    skipped = unreadable.recorded(folder.path / UNREADABLE)
    known = folder.read_config().get("unreadable_files", {})
    new = {path: why for path, why in skipped.items() if path not in known}
    if new:
        listed = "; ".join(f"{path} ({why})" for path, why in list(new.items())[:20])
        more = f"; and {len(new) - 20} more" if len(new) > 20 else ""
        folder.log(f"skipped {len(new)} unreadable image file(s), all listed in unreadable.txt: {listed}{more}")
        folder.update_config(unreadable_files=skipped)


def restore_outputs(run: Run, saved: dict, folder: RunFolder) -> None:
    """After a resume, make the folder agree with the checkpoint, wherever the crash hit the epoch's end.

    end_of_epoch writes checkpoint_last.pt, then the kept checkpoint_NNNN.pt, then the
    CSVs, then the log line; a crash between two of these leaves the later ones behind.
    The checkpoint is the truth: metrics.csv and steps.csv are rewritten from its
    history, the epoch lines missing from log.txt are appended (marked as restored),
    and a kept checkpoint of its epoch that was never written is written from it (it
    is the same state).
    """
    cfg, epoch = run.config, saved["epoch"]
    kept = f"checkpoint_{epoch:04d}.pt"
    due = cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and not (folder.path / kept).exists()
    if due and saved.get("position") is None:  # a state saved inside the next epoch is not this epoch's copy
        folder.save(saved, kept)
        folder.log(f"wrote {kept}, which a crash prevented, from checkpoint_last.pt (the same state)")
    folder.write_csv(run.history, "metrics.csv")
    folder.write_csv(run.steps, "steps.csv")
    logged = {int(m.group(1)) for line in folder.logged_lines() if (m := re.match(r"epoch (\d+)/", line))}
    for row in run.history:
        if row["epoch"] not in logged:
            folder.log(epoch_line(row, cfg) + "  (restored from the checkpoint after a crash)")


def epoch_line(row: dict, cfg: Config) -> str:
    """log.txt's line for an epoch; epoch 0 is the random network's kNN, before any step."""
    if row["epoch"] == 0:
        return f"epoch 0/{cfg.epochs}  kNN {row['knn_top1']:.2f}% (the random network, before any step)"
    return (
        f"epoch {row['epoch']}/{cfg.epochs}  loss {row['loss']:.4f}  acc {100 * row['acc']:.1f}%  "
        f"lr {row['lr']:.4g}{_readings(row)}  {row['train_s']:.1f} s ({row['images_per_s']:.0f} img/s)"
    )


def summary(run: Run) -> str:
    """One line on a run: its last epoch's loss (against chance), instance accuracy, and kNN top-1 as
    points above the random network's (epoch 0), the only reading of kNN that says what training added."""
    trained = [r for r in run.history if r["epoch"] > 0]
    if not trained:
        return "no epoch trained yet"
    last, cfg = trained[-1], run.config
    line = (
        f"after {last['epoch']} epochs: loss {last['loss']:.3f} (chance ln(K+1) = {math.log(cfg.K + 1):.2f}), "
        f"instance accuracy {100 * last['acc']:.1f}%"
    )
    random = next((r["knn_top1"] for r in run.history if r["epoch"] == 0), None)
    knn = next((r["knn_top1"] for r in reversed(trained) if r["knn_top1"] is not None), None)
    if knn is not None and random is not None:
        line += f", kNN top-1 {knn:.1f}%: {knn - random:+.1f} points above the random network ({random:.1f}%)"
    elif knn is not None:
        line += f", kNN top-1 {knn:.1f}%"
    return line
