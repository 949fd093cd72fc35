"""Start a multi-process run from Python, e.g. a notebook cell with `gpus = 8`.

torch's elastic launcher (the Python API behind torchrun) starts one worker
per GPU (or per CPU process with gloo) on this machine; each runs
`train.train_worker`, or `transfer.job.transfer_worker` for a transfer row
(`start_processes` serves both). Rank 0 appends its progress lines to
`output_dir/log.txt`, which this process relays to its own output, so the
notebook shows progress while the cell runs. If a worker raises or dies, the launcher stops the others
and the cell raises with the worker's error; checkpoints already written stay.
For several machines, use torchrun with `python -m mocolab` (see the README).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from . import checkpoint as ckpt
from .config import Config, config_from_dict


def launch(cfg: Config, progress: bool = True, worker=None):
    """Run `cfg` in cfg.world_size local processes; returns the Run, read back from its checkpoint.

    worker: the function each process runs with the config dict (default: training).
    """
    from .train import preflight  # imported here: train imports this module lazily too
    preflight(cfg)  # too many GPUs, no checkpoint to resume, ...: fail before any process starts
    start_processes(worker or _worker, cfg.to_dict(), cfg.world_size, cfg.gpus > 1, cfg.output_dir, progress)
    return load_run(cfg.output_dir)


def start_processes(worker, config: dict, world_size: int, gpus: bool, output_dir, progress: bool = True) -> None:
    """Run `worker(config)` in `world_size` local processes (NCCL on GPUs, else gloo) and wait for them,
    relaying the lines rank 0 appends to output_dir/log.txt. `worker` must be a module-level function
    (the processes are spawned) decorated with torch's `record`, so its errors reach this process."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    start = log.stat().st_size if log.exists() else 0
    launch_config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world_size,
                                 run_id=f"mocolab-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                                 rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.5,
                                 start_method="spawn")
    backend = "NCCL on GPUs" if gpus else "gloo on the CPU"
    print(f"starting {world_size} processes ({backend}); progress is relayed from {log}", flush=True)
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(log, start, stop, progress), daemon=True)
    relay.start()
    try:
        elastic_launch(launch_config, worker)(config)
    finally:
        stop.set()
        relay.join()


def cpu_threads(world_size: int) -> None:
    """CPU processes share the cores instead of each taking all of them."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


@record  # a worker's exception reaches the launching process with its traceback
def _worker(config: dict) -> None:
    from .train import train_worker
    cfg = config_from_dict(config)
    if cfg.gpus == 0:
        cpu_threads(cfg.world_size)
    train_worker(cfg, progress=False, echo=False)


def _relay(path: Path, start: int, stop: threading.Event, echo: bool) -> None:
    """Print the lines rank 0 appends to log.txt until `stop` is set (then drain the rest)."""
    position = start
    while True:
        finished = stop.wait(1.0)
        if path.exists():
            with open(path) as f:
                f.seek(position)
                text = f.read()
                position = f.tell()
            if text and echo:
                print(text, end="", flush=True)
        if finished:
            return


def load_run(output_dir: str | Path):
    """A finished (or interrupted) run read back from its output directory's checkpoint_last.pt."""
    from .train import Run, build_model
    state = ckpt.load_checkpoint(Path(output_dir) / "checkpoint_last.pt")
    cfg = config_from_dict(state["config"])
    model = build_model(dataclasses.replace(cfg, sync_bn=False))  # same tensors as SyncBatchNorm
    ckpt.load_state(model, state["model"], Path(output_dir) / "checkpoint_last.pt")
    return Run(Path(output_dir), cfg, model.to(torch.device("cpu")), state["history"], state["steps"])
