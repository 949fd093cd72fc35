"""Batches made ahead in a thread while the training step runs (config `prefetch`).

On the device and jpeg paths the training process makes its own batches (decoding, cropping, augmenting on
the device), and made in line they wait for the step before them and the step waits for them. Made `depth`
steps ahead by a thread, on a GPU on its own CUDA stream, the batch of step t+1 is decoded and augmented while
step t runs: the two dispatch from two threads (torch's operations release the GIL) and their kernels overlap.

What a run computes does not change. Each batch is a function of (seed, epoch, step, rank) and the data alone
(the paths' seeded draws), so a batch made ahead equals the one made in line, bit for bit; the batches made
ahead of a stop are dropped and made again on resuming, the same. On a GPU the training stream waits for each
batch's event before it reads the batch, and each tensor of it is recorded on that stream, so that the caching
allocator does not hand its memory to the thread's next batch while the step still reads it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from typing import Callable, Iterator

import torch

from ..run.device import side_stream, working_on

_END = object()  # the thread's last item: the batches ran out


class _Failed:
    """What the thread raised, to raise again in the training process's thread."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetched:
    """PretrainBatches whose epochs are made `depth` batches ahead (`made_ahead`), on `device`."""

    def __init__(self, batches, depth: int, device):
        self.batches, self.depth, self.device = batches, depth, torch.device(device)
        self.path = batches.path

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch: int, start: int = 0):
        return made_ahead(lambda: self.batches.epoch(epoch, start), self.depth, self.device)


def made_ahead(make: Callable[[], Iterator], depth: int, device) -> Iterator:
    """The items of the iterator make() returns, made in a thread, at most `depth` of them waiting.

    make() is called in the thread, when the first item is asked for (a loader started there draws its seed
    from torch's generator at the same point of the run as one started in line). An error in the thread is
    raised here, at the item it failed to make. Closing this generator (the epoch's end, a break, a stop
    signal, garbage collection) stops the thread and closes make()'s iterator there."""
    side = side_stream(device)
    waiting, stop = queue.Queue(maxsize=depth), threading.Event()

    def offer(item) -> bool:  # False once stopped: the consumer has gone
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            with working_on(side), contextlib.closing(make()) as items:
                for item in items:
                    ready = None
                    if side is not None:
                        ready = torch.cuda.Event()
                        ready.record(side)
                    if not offer((item, ready)):
                        return
            offer((_END, None))
        except BaseException as error:  # noqa: BLE001 -- every error belongs to the consumer
            offer((_Failed(error), None))

    thread = threading.Thread(target=produce, name="mocolab batches ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, ready = waiting.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            if ready is not None:
                stream = torch.cuda.current_stream(side.device)
                stream.wait_event(ready)
                for tensor in _tensors(item):
                    tensor.record_stream(stream)
            yield item
    finally:
        stop.set()
        thread.join(timeout=60)
        if thread.is_alive():
            warnings.warn("the thread making batches ahead did not stop within 60 s; it is left to end", stacklevel=2)


def _tensors(item) -> Iterator[torch.Tensor]:
    """The tensors of a batch: ((x_q, x_k), labels), or any nesting of tuples and lists of tensors."""
    if torch.is_tensor(item):
        yield item
    elif isinstance(item, (tuple, list)):
        for part in item:
            yield from _tensors(part)
