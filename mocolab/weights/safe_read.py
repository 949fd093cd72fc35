"""Reading a foreign checkpoint as data: torch files that hold NumPy arrays, and plain pickles.

Published checkpoints are not all mocolab's: OpenMMLab's hold NumPy arrays in their `meta`, and
detectron2's .pkl files are plain pickles of arrays. Both are read with the constructors of
NumPy's arrays, scalars and dtypes allowed and nothing else (the "Restricting Globals" recipe of
Python's pickle documentation): a file whose unpickling would call any other code is refused
before it runs, with mocolab.run.checkpoint's errors. mocolab's own files need none of this
(`checkpoint.read`).
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from pathlib import Path

import numpy as np

from ..run import checkpoint as ckpt

# A torch file in the format before torch 1.6 starts with this magic number, pickled (protocol 2, LONG1).
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def numpy_data() -> dict[str, object]:
    """NumPy's array, scalar and dtype constructors, by every name a pickle may give them (NumPy 1 wrote
    numpy.core.multiarray, NumPy 2 writes numpy._core.multiarray). They build data and call nothing else."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    found = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for package in ("numpy.core", "numpy._core"):
        found.update({f"{package}.multiarray.{name}": getattr(core, name) for name in ("_reconstruct", "scalar")})
    dtypes = getattr(np, "dtypes", None)  # the dtype classes (NumPy >= 1.25), which torch's unpickler rebuilds
    found.update({f"numpy.dtypes.{n}": getattr(dtypes, n) for n in dir(dtypes or ()) if n.endswith("DType")})
    return found


class _DataUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only NumPy's array constructors and two plain containers."""

    allowed = {**numpy_data(), "collections.OrderedDict": collections.OrderedDict, "_codecs.encode": codecs.encode}

    def find_class(self, module: str, name: str):
        if f"{module}.{name}" in self.allowed:
            return self.allowed[f"{module}.{name}"]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read(path: str | Path, content: bytes | None = None):
    """A torch file (zip, or the format before torch 1.6) or a plain pickle, read as data only; refusals and
    damage are `checkpoint.read`'s CheckpointErrors. content: the file's bytes, already read."""
    path = Path(path)
    head = ckpt.first_bytes(path, content)
    if head[:4] == b"PK\x03\x04" or _LEGACY_MAGIC in head[:32]:
        return ckpt.read(path, content, allowed=numpy_data())
    with ckpt.read_as_data(path), open(path, "rb") if content is None else io.BytesIO(content) as f:
        return _DataUnpickler(f).load()
