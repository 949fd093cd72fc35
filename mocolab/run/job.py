"""The lifecycle every mocolab job shares: pretraining (`pretraining.py`) and fine-tuning (`transfer/job.py`).

    run(cfg, worker, preflight, read_back)

1. preflight: everything that can fail fails before any work (an existing run
   without resume=True, a missing or foreign checkpoint, too many GPUs, ...),
   once per process: its `Checked` (the device, the checkpoint read) goes on to
   the worker, and a caller that checked early (notebook 02) passes its own;
2. with cfg.world_size > 1 and no launcher around, start that many local
   processes (`launch.start_processes`), each running `worker` on the config,
   and read the finished run back from its folder; otherwise (one process, or
   a rank started by torchrun) run `worker` here;
3. the job holds the folder's lock (`lock.held`) until it ends: one writer per folder;
4. in the worker: join the process group (`process_group`), and let rank 0
   write the run's folder (`RunFolder`): config.json with the code version,
   log.txt (which the launcher relays), atomic checkpoints, CSVs.

A config is a frozen settings dataclass (mocolab.settings) with `output_dir`,
`resume`, `gpus`, `processes`, `world_size` and `to_dict()`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import record

from . import checkpoint as ckpt
from .. import distributed as dist_
from . import launch, lock, preemption
from .. import settings
from .device import resolve_device
from ..settings import ConfigError


class Checked(NamedTuple):
    """What a job's preflight found: the config it checked, the device and the checkpoint to resume (or None),
    and the state of checkpoint_last.pt it saw (`stamp`)."""

    cfg: object
    device: torch.device
    saved: dict | None
    stamp: tuple | None

    def still_holds(self, cfg) -> bool:
        """Whether these checks are this config's and its folder has not changed since (a run that started or
        finished in between, a notebook cell run again, needs new checks)."""
        return self.cfg == cfg and self.stamp == checkpoint_stamp(cfg)


def checkpoint_stamp(cfg) -> tuple | None:
    """(size, modification time) of the run's checkpoint_last.pt, or None when there is none."""
    try:
        info = os.stat(Path(cfg.output_dir) / "checkpoint_last.pt")
    except OSError:  # none, or no folder to hold one (writable_folder names why)
        return None
    return info.st_size, info.st_mtime_ns


def run(cfg, worker, preflight, read_back, progress: bool = True, checked: Checked | None = None):
    """Run `worker(cfg, progress, checked=...)` here, or start cfg.world_size local processes that run it.

    preflight(cfg) -> Checked runs first either way, unless `checked` is its result for this config and folder;
    read_back(output_dir) turns the finished folder of a multi-process run into what the worker would have
    returned. Each started process checks for itself: it needs its own device and its own copy of the weights.
    """
    if checked is None or not checked.still_holds(cfg):
        checked = preflight(cfg)  # too many GPUs, no checkpoint to resume, ...: fail before any process starts
    # One writer per folder: this process (or torchrun's rank 0) holds the lock for the processes it starts.
    first = not dist_.launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
    with lock.held(cfg.output_dir) if first else nullcontext():
        return _run_checked(cfg, worker, read_back, progress, checked)


def _run_checked(cfg, worker, read_back, progress: bool, checked: Checked):
    """run() once the checks are made and the folder is this job's."""
    if cfg.world_size > 1 and not dist_.launched_by_torchrun() and not dist_.is_distributed():
        logged = len(RunFolder(cfg.output_dir).logged_lines())
        try:
            launch.start_processes(
                entry,
                (worker, type(cfg), cfg.to_dict()),
                cfg.world_size,
                cfg.gpus > 1,
                Path(cfg.output_dir) / "log.txt",
                progress,
                preemption.signal_names(getattr(cfg, "stop_signals", "")),
            )
        except Exception as err:
            stopped = _stop_line(cfg, err, logged)
            if stopped is None:
                raise
            raise preemption.Preempted(f"{stopped} (in {cfg.output_dir})") from None
        return read_back(cfg.output_dir)
    return worker(cfg, progress, checked=checked)


def _stop_line(cfg, err: Exception, logged: int) -> str | None:
    """When the processes ended on a stop signal (each exits REQUEUE; or this process got the signal, and the
    launcher passed it on), the line in which rank 0 said where it stopped; else None."""
    codes = [failure.exitcode for failure in getattr(err, "failures", {}).values()]
    if not (codes and all(code == preemption.REQUEUE for code in codes)) and not isinstance(err, SignalException):
        return None
    lines = RunFolder(cfg.output_dir).logged_lines()[logged:]
    return next((line for line in reversed(lines) if line.startswith("stopped by")), None)


@record  # a worker's exception reaches the launching process with its traceback
def entry(payload: tuple) -> None:
    """What each launched process runs, given (worker function, config class, config dict): rebuild the
    config, share the CPU cores, run the worker quietly. (The functions travel pickled by name.) A worker
    stopped by a stop signal exits REQUEUE, which the launching process recognises."""
    worker, config_type, config = payload
    cfg = settings.from_dict(config_type, config)
    if cfg.gpus == 0:
        launch.cpu_threads(cfg.world_size)
    try:
        worker(cfg, progress=False, echo=False)
    except preemption.Preempted:
        raise SystemExit(preemption.REQUEUE) from None


def open_run(cfg, kind: str) -> Checked:
    """The checks every job makes before work: the output folder, the checkpoint to resume, the device.

    Returns Checked(cfg, device, the saved checkpoint or None). kind: "pretraining" or "fine-tuning".
    """
    last, stamp = Path(cfg.output_dir) / "checkpoint_last.pt", checkpoint_stamp(cfg)
    if not dist_.launched_by_torchrun():  # a started process runs under its launcher's lock
        lock.check_free(cfg.output_dir)  # another live run writes here (a notebook cell run twice, ...)
    if not cfg.resume and last.exists():
        raise ConfigError(
            f"{cfg.output_dir} already holds a {kind} run (checkpoint_last.pt); pass resume=True "
            f"to continue it, or choose another output_dir"
        )
    if cfg.resume and not last.exists():
        raise ckpt.CheckpointError(
            f"no checkpoint at {last.resolve()}: nothing to resume. Start the run with "
            f"resume=False, or point output_dir at the run to continue."
        )
    writable_folder(Path(cfg.output_dir))
    saved = ckpt.load_checkpoint(last) if cfg.resume else None
    if saved is not None and ckpt.kind_of(saved) != kind:
        raise ckpt.CheckpointError(
            f"{last} is {ckpt.describe(saved)}, not a {kind} checkpoint: it cannot be "
            f"resumed as one; use another output_dir"
        )
    if saved is not None:
        ckpt.check_finite(saved["model"], last)
    return Checked(cfg, resolve_device(cfg.gpus), saved, stamp)


def writable_folder(path: Path) -> None:
    """Fail, naming the folder, when output_dir cannot be created or written: before minutes of data and model
    set-up, and without creating anything (a run refused later leaves no empty folder behind)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"output_dir {path} cannot be created: {existing} is a file, not a folder; choose another output_dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output_dir {path} cannot be written: {existing} is not writable by this user; choose "
            f"a folder you can write to"
        )


@contextmanager
def process_group(device: torch.device):
    """Join the process group when torchrun (or the launcher) started this process; yields (rank, world)."""
    owns = dist_.launched_by_torchrun() and not dist_.is_distributed()
    if owns:
        dist_.init_process_group(use_cuda=device.type == "cuda")
    try:
        yield dist_.rank(), dist_.world_size()
    finally:
        if owns:
            torch.distributed.destroy_process_group()


def code_version() -> str:
    """mocolab's git SHA (with "+dirty" for uncommitted changes), or "unknown" outside a clone."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write_text(path: Path, text: str) -> None:
    """Replace path's content at once: a crash leaves the previous version, never half a file."""
    ckpt.atomic_write(path, lambda f: f.write(text), "w")


RUN_REWRITES = "the run writes it again (its checkpoint holds the config)"


def read_json(path: Path, rewrite: str) -> dict:
    """A JSON file mocolab wrote; a damaged one (cut short, edited by hand) is a ConfigError that names it and
    says what deleting it does (`rewrite`)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        message = f"{path} is not valid JSON ({err}): it was cut short or edited. Delete it: {rewrite}"
        raise ConfigError(message) from None


def write_csv(rows: list[dict], path: Path) -> None:
    """rows as a CSV (the union of their keys as columns), replaced atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


class RunFolder:
    """A job's output directory. Only rank 0 writes (main=True); on other ranks every method is a no-op."""

    def __init__(self, path: str | Path, main: bool = True, echo: bool = True):
        self.path, self.main, self.echo = Path(path), main, echo

    def write_config(self, cfg, device, world: int, **extra) -> None:
        """config.json: the config, mocolab's git SHA, torch version, device, processes, and `extra`."""
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = {
                "config": cfg.to_dict(),
                "code_version": code_version(),
                "torch": torch.__version__,
                "device": str(device),
                "processes": world,
                **extra,
            }
            atomic_write_text(self.path / "config.json", json.dumps(meta, indent=2))

    def read_config(self) -> dict:
        """config.json as written so far (empty when there is none)."""
        path = self.path / "config.json"
        return read_json(path, RUN_REWRITES) if path.exists() else {}

    def update_config(self, **entries) -> None:
        """Add or replace top-level entries of config.json (what a run learns as it goes)."""
        if self.main:
            atomic_write_text(self.path / "config.json", json.dumps({**self.read_config(), **entries}, indent=2))

    def log(self, line: str) -> None:
        """Append a line to log.txt (the launcher relays it into the notebook); print it when echoing."""
        if self.main:
            if self.echo:
                print(line, flush=True)
            with open(self.path / "log.txt", "a") as f:
                f.write(line + "\n")

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the *.tmp files of writes a crash interrupted (atomic_save renames only finished files)."""
        if not self.main or not self.path.is_dir():
            return []
        stale = sorted(self.path.glob("*.tmp"))
        for path in stale:
            path.unlink()
        if stale:
            self.log(
                f"removed {len(stale)} unfinished file(s) that a crash left behind: {', '.join(p.name for p in stale)}"
            )
        return [p.name for p in stale]

    def logged_lines(self) -> list[str]:
        """The lines of log.txt so far (empty when there is none)."""
        log = self.path / "log.txt"
        return log.read_text().splitlines() if log.exists() else []

    def save(self, state: dict, name: str = "checkpoint_last.pt") -> None:
        if self.main:
            ckpt.atomic_save(state, self.path / name)

    def write_csv(self, rows: list[dict], name: str) -> None:
        if self.main:
            write_csv(rows, self.path / name)
