"""Counting the operations a piece of code runs: the CPU's proxy for a GPU's kernel launches and host syncs.

    with Operations() as ops:
        trainer.step(x_q, x_k, 0)
    ops.total, ops.computing, ops.from_host, ops.by_name.most_common(5)

On a GPU a step is launch-bound when it runs many small operations, and stalls when it builds a tensor from
host data (a copy the stream waits for). Neither can be timed on a CPU, but both can be counted there, at the
dispatcher (torch's TorchDispatchMode), as tests and benchmarks do.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class Operations(TorchDispatchMode):
    """Counts of the aten operations run inside the `with` block.

    total: every operation; computing: those that are not views (each a kernel launch on a GPU);
    from_host: tensors built from Python data (aten.lift_fresh: a host-to-device copy on a GPU);
    by_name: the computing operations by name."""

    def __init__(self):
        super().__init__()
        self.total = self.computing = self.from_host = 0
        self.by_name = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        self.from_host += func is torch.ops.aten.lift_fresh.default
        if not func.is_view:
            self.computing += 1
            self.by_name[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
