"""One way to derive seeds: every random stream of a run is a function of the run's seed and a position.

mocolab makes random draws reproducible by position rather than by history:
the views of image i in epoch e, the augmentation draws of step s on rank r,
the images of fine-tuning iteration i. Each stream takes its seed from
`derive_seed(seed, "name of the stream", position...)`, which mixes the parts
through numpy's SeedSequence (a well-tested hash for exactly this), so nearby
positions get unrelated seeds and two streams never share one by accident.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from the run's seed, a stream name and the position in that stream.

    Strings name the stream ("views", "order", ...); integers must be >= 0.
    """
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    if any(w < 0 for w in words):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*parts: int | str, device="cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with derive_seed(*parts)."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


@contextmanager
def seeded(*parts: int | str):
    """Run the block with torch's global CPU RNG seeded by derive_seed(*parts), then restore the caller's.

    For code that draws from the global RNG (torchvision transforms in a loader worker).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*parts))
        yield
