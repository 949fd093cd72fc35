"""Preemption: on a scheduler's stop signal, finish the step, save the position inside the epoch, exit "requeue".

SLURM (`--signal=USR1@120`, and SIGTERM at the time limit or on `scancel`), Kubernetes and cloud spot
machines send a signal some seconds before they stop a job. While a run holds `StopSignals`, a handler
notes the signal and does nothing else; the training loop reads the note after each step (`requested`),
every process gives the same answer at the same step (one all-reduce of one number), rank 0 writes
checkpoint_last.pt with the position inside the epoch, and the run raises `Preempted`. The command line
exits with REQUEUE, which a batch script turns into `scontrol requeue` (docs/reliability.md); resume=True
then continues exactly where the run stopped.

SIGINT is not a stop signal: a keyboard or kernel interrupt stops at once, and resume=True continues from
the last checkpoint written (the end of the last finished epoch, or the last `checkpoint_every_steps`).
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

REQUEUE = 75  # EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry"


class Preempted(Exception):
    """The run stopped on a stop signal after saving its position; resume=True continues it exactly."""

    exit_code = REQUEUE


def signal_names(text: str) -> tuple[str, ...]:
    """ "SIGTERM,SIGUSR1" -> ("SIGTERM", "SIGUSR1"); "" -> (). Unknown names raise ValueError."""
    names = tuple(name.strip().upper() for name in text.split(",") if name.strip())
    unknown = [name for name in names if not hasattr(signal.Signals, name) or name in ("SIGKILL", "SIGSTOP")]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a signal a process can catch (e.g. SIGTERM, SIGUSR1, SIGUSR2)")
    return names


class StopSignals:
    """Notes the first stop signal received while the block runs; restores the previous handlers after it.

    Handlers can be installed only in the main thread; elsewhere (a run started in a thread) the block
    notes nothing and the signal keeps its previous meaning.
    """

    def __init__(self, names: tuple[str, ...]):
        self.signals = [signal.Signals[name] for name in names]
        self.received: str | None = None
        self._previous: dict = {}
        self._group = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in self.signals}
        if dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # agreeing on a CPU number must not sync the GPUs
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _note(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def requested(self) -> str | None:
        """The stop signal received by any process so far, or None: the same answer on every process.

        Called by every process after every step: with several processes it is a collective (an all-reduce
        of one CPU number, tens of microseconds), so that all stop after the same step.
        """
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.received
        code = torch.tensor([self.signals.index(signal.Signals[self.received]) + 1 if self.received else 0])
        dist.all_reduce(code, op=dist.ReduceOp.MAX, group=self._group)
        return self.signals[int(code) - 1].name if int(code) else None
