"""How DataLoader worker processes start: by fork, except inside a Jupyter kernel.

A forked child copies its parent's memory, threads' locks included, but not its threads. A Jupyter
kernel runs ZeroMQ's I/O threads; a child forked while one of them holds a lock or a socket aborts in
ZeroMQ's own assertions (`signaler.cpp`), and sometimes takes the kernel with it: `pretrain()` with
loader workers in a notebook failed in 3 of 5 cells here (`DataLoader worker ... is killed by signal:
Aborted`, then a dead kernel). In a kernel the workers therefore start from a fork server, a clean
process started once (multiprocessing's "forkserver", with torch and mocolab's data modules imported in
it ahead, so that each worker starts in milliseconds, not the seconds a fresh "spawn" takes).

A fork server's children inherit its environment, not the kernel's as it is now, so the MOCOLAB_*
variables a run sets (the record of unreadable files, ...) are passed to each worker as it starts.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys

PRELOAD = ["torch", "torchvision", "mocolab.data.loader", "mocolab.data.jpeg", "mocolab.evaluate.features"]


def in_a_kernel() -> bool:
    """Whether this process is a Jupyter (IPython) kernel."""
    return "ipykernel" in sys.modules


def loader_processes(workers: int) -> dict:
    """DataLoader arguments for `workers` worker processes: none outside a kernel (fork), in a kernel a fork
    server's context and the MOCOLAB_* environment to set in each worker."""
    if workers == 0 or not in_a_kernel():
        return {}
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the server starts, the first time
    env = {name: value for name, value in os.environ.items() if name.startswith("MOCOLAB_")}
    return {"multiprocessing_context": context, "worker_init_fn": functools.partial(_set_environment, env)}


def _set_environment(env: dict, worker_id: int) -> None:
    """The kernel's MOCOLAB_* variables as they were when the loader started, and no others."""
    for name in [name for name in os.environ if name.startswith("MOCOLAB_") and name not in env]:
        del os.environ[name]
    os.environ.update(env)
