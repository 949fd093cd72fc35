"""Start N local processes running one function, relay their progress, stop them all on the first failure.

A generic launcher that knows nothing of training: `mocolab.run.job` uses it for
every job (pretraining, fine-tuning). torch's elastic launcher (the Python
API behind torchrun) starts the processes on this machine and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each; if one raises
or dies, it stops the others and raises here with that process's error.
Meanwhile a thread relays the lines rank 0 appends to a log file, so a
notebook cell shows progress while it waits. For several machines, use
torchrun itself (docs/pretraining.md, "One GPU, N GPUs, several machines").
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import torch
from torch.distributed.launcher.api import LaunchConfig, elastic_launch


SIGNALS_ENV = "TORCHELASTIC_SIGNALS_TO_HANDLE"


def start_processes(
    fn, arg, world_size: int, use_cuda: bool, log: str | Path, progress: bool = True, stop_signals: tuple = ()
) -> None:
    """Run `fn(arg)` in `world_size` local processes (NCCL on GPUs, else gloo) and wait for them.

    fn must be a module-level function and `arg` picklable, since the processes are spawned;
    decorate fn with torch's `record` so that its errors reach this process with their traceback. Lines
    appended to `log` are printed while the processes run. A signal in stop_signals (or SIGTERM, SIGINT,
    SIGHUP, SIGQUIT) that reaches this process is passed on to the processes, which get 30 s to end.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world_size,
        run_id=f"mocolab-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    backend = "NCCL on GPUs" if use_cuda else "gloo on the CPU"
    print(f"starting {world_size} processes ({backend}); progress is relayed from {log}", flush=True)
    stop = threading.Event()
    relay = threading.Thread(target=relay_log, args=(log, start, stop, progress), daemon=True)
    relay.start()
    # torch's launcher passes on the signals this variable names (its default: the four above), read as it starts.
    handled = ",".join(dict.fromkeys(("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", *stop_signals)))
    before = os.environ.get(SIGNALS_ENV)
    os.environ[SIGNALS_ENV] = handled
    try:
        elastic_launch(launch_config, fn)(arg)
    finally:
        stop.set()
        relay.join()
        if before is None:
            os.environ.pop(SIGNALS_ENV, None)
        else:
            os.environ[SIGNALS_ENV] = before


def cpu_threads(world_size: int) -> None:
    """CPU processes share the cores instead of each taking all of them."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


def relay_log(path: Path, start: int, stop: threading.Event, echo: bool) -> None:
    """Print the lines appended to `path` after byte `start` until `stop` is set (then drain the rest)."""
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
