"""A run's output directory: everything about a run, written by rank 0 as it goes.

    config.json           the config, mocolab's git SHA, torch version, device, processes
    metrics.csv           one row per epoch: loss, lr, instance acc, similarities, kNN top-1, seconds
    steps.csv             one row per `log_every` steps: loss, acc, similarities, lr, queue key ages
    log.txt               one line per epoch (relayed into the notebook by the launcher)
    checkpoint_last.pt    written every epoch (atomically); `resume=True` continues from it
    checkpoint_NNNN.pt    kept every `checkpoint_every` epochs
    tb/                   TensorBoard logs

A crash loses at most the epoch in progress.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import Config
from .moco import MoCo


@dataclass
class Run:
    """What `pretrain` returns: where the run lives, its model and its metric history."""

    output_dir: Path
    config: Config
    model: MoCo
    history: list[dict] = field(default_factory=list)  # one row per epoch (as in metrics.csv)
    steps: list[dict] = field(default_factory=list)  # one row per log_every steps (steps.csv)


def code_version() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    names = list(dict.fromkeys(k for row in rows for k in row))
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def start_outputs(cfg: Config, device, autocast_dtype, num_steps: int, world: int, start_epoch: int,
                  data_path: str = "cpu"):
    """config.json, and the TensorBoard writer (rank 0 only)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": cfg.to_dict(), "code_version": code_version(), "torch": torch.__version__,
            "device": str(device), "processes": world, "precision": str(autocast_dtype or "fp32"),
            "steps_per_epoch": num_steps, "data_path": data_path}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to import
    return SummaryWriter(str(out / "tb"), purge_step=start_epoch * num_steps + 1)


def end_of_epoch(run: Run, row: dict, optimizer, scaler, writer, echo: bool = True) -> None:
    """Log, checkpoint (atomically) and rewrite the CSVs: what a crash must not lose."""
    cfg, out, epoch = run.config, run.output_dir, row["epoch"]
    for key in ("loss", "acc", "pos_sim", "neg_sim", "knn_top1", "images_per_s"):
        if row[key] is not None:
            writer.add_scalar(f"epoch/{key}", row[key], epoch)
    writer.flush()
    state = {"model": run.model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "epoch": epoch, "rng": ckpt.rng_state(),
             "config": cfg.to_dict(), "history": run.history, "steps": run.steps}
    ckpt.atomic_save(state, out / "checkpoint_last.pt")
    if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
        ckpt.atomic_save(state, out / f"checkpoint_{epoch:04d}.pt")
    write_csv(run.history, out / "metrics.csv")
    write_csv(run.steps, out / "steps.csv")
    line = epoch_line(row, cfg)
    if echo:
        print(line, flush=True)
    with open(out / "log.txt", "a") as f:  # the launcher relays this file into the notebook
        f.write(line + "\n")


def epoch_line(row: dict, cfg: Config) -> str:
    knn = f"  kNN {row['knn_top1']:.2f}%" if row["knn_top1"] is not None else ""
    return (f"epoch {row['epoch']}/{cfg.epochs}  loss {row['loss']:.4f}  acc {100 * row['acc']:.1f}%  "
            f"lr {row['lr']:.4g}{knn}  {row['train_s']:.1f} s ({row['images_per_s']:.0f} img/s)")
