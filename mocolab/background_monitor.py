"""The kNN monitor of an epoch read while the next epoch trains (config `knn_background`).

The monitor's pass (the bank's and the test set's features, the kNN vote; with the online probe, its top-1)
stops training for its length when read in line: on a GPU 0.5-0.8 s beside a 5.1 s epoch of cifar10_demo
(docs/performance.md). In the background, the query encoder (and the probe) as they stand at the epoch's end
are copied, and a thread reads the copy, on a GPU on its own CUDA stream, while the next epoch's steps run.
The reading is the one made in line, bit for bit (the copy holds the same weights; the kNN sets held on the
device draw nothing from torch's generator), and it fills its epoch's row when it arrives: at the next
epoch's end, before any checkpoint written inside that epoch, and at the run's end. An epoch's checkpoint is
written at once with the reading pending; a run resumed from it reads it then, from the same weights
(`pretraining`). With compile=True the copy runs eager (a module's compiled forward is not copied), so its
readings can differ from the compiled encoder's in float rounding; with compile="model" or "graphs" the query
encoder is not compiled on its own, and the monitor reads it eager both ways.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Callable

import torch

from .run.device import side_stream, working_on


class BackgroundMonitor:
    """At most one reading in flight: `start` it at an epoch's end, `finish` it (waiting if need be) later.

    read(encoder, probe) -> readings: the monitor (train.monitor_readings with the run's sets and config)."""

    def __init__(self, read: Callable[..., dict], device):
        self.read, self.side = read, side_stream(device)
        self.row: dict | None = None  # the epoch's row the reading in flight will fill

    def start(self, encoder: torch.nn.Module, probe, row: dict) -> None:
        """Read `encoder` and `probe` as they are now, in a thread; `row` (the epoch's, in the run's history)
        gets the readings at `finish`."""
        if self.row is not None:  # its row would be filled without its outputs being written: finish() it first
            raise RuntimeError(f"the reading of epoch {self.row.get('epoch')} is still in flight; finish() it first")
        encoder, probe = copy.deepcopy(encoder), copy.deepcopy(probe)  # the weights of this epoch's end
        ready = None
        if self.side is not None:  # the copies are made on the training stream: the thread's waits for them
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.side.device))
        self.row, self.copies, self.outcome = row, (encoder, probe), {}
        self.thread = threading.Thread(target=self._read, args=(ready,), name="mocolab kNN monitor", daemon=True)
        self.thread.start()

    def _read(self, ready) -> None:
        tic = time.perf_counter()
        try:
            with working_on(self.side):
                if ready is not None:
                    self.side.wait_event(ready)
                self.outcome["readings"] = self.read(*self.copies)  # floats: read on the host, the stream done
            self.outcome["seconds"] = round(time.perf_counter() - tic, 3)
        except BaseException as error:  # noqa: BLE001 -- raised again in the training thread, at finish
            self.outcome["error"] = error

    def finish(self) -> dict | None:
        """Wait for the reading in flight, write it into its row and return the row (None: none in flight)."""
        if self.row is None:
            return None
        self.thread.join()
        row, outcome = self.row, self.outcome
        self.row, self.copies = None, None
        if "error" in outcome:
            raise outcome["error"]
        row.update(outcome["readings"], knn_s=outcome["seconds"])
        return row
