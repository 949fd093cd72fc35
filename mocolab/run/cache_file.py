"""A cache file that checks itself: written with its key and a checksum of its content, verified when read.

The feature cache (evaluate.feature_cache) and the decoded-image cache (data.device) keep what took minutes
to compute. A file cut short by a full disk or a killed process, or bytes changed on disk, must never be
used, and must not make every later run fail either: `load` warns and returns None, and the caller builds
the content again. A cache that cannot be written (a full disk) is skipped with a warning: the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from . import checkpoint as ckpt


def digest(payload: dict) -> str:
    """SHA-256 over the payload's entries in name order: each tensor's dtype, shape and bytes, other values as
    JSON."""
    h = hashlib.sha256()
    for name in sorted(payload):
        value = payload[name]
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


def save(path: str | Path, key: dict, payload: dict) -> None:
    """Write payload with its key and checksum (atomically). On a full disk: a warning, and no cache."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_save({"key": key, "digest": digest(payload), **payload}, path)
    except ckpt.DiskFullError as err:
        warnings.warn(f"not cached: {err}", stacklevel=2)


def load(path: str | Path, key: dict) -> dict | None:
    """The payload stored under `key`, or None when there is none or the file is damaged (then it says so)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        warnings.warn(
            f"the cache file {path} cannot be read ({type(err).__name__}: {str(err)[:120]}), e.g. cut short by a "
            f"full disk or a killed process: building it again",
            stacklevel=2,
        )
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None  # another key under the same name: rebuilt and replaced
    payload = {name: value for name, value in stored.items() if name not in ("key", "digest")}
    if stored.get("digest") != digest(payload):
        warnings.warn(
            f"the cache file {path} does not match its checksum (its bytes changed on disk, or an older mocolab "
            f"wrote it without one): building it again",
            stacklevel=2,
        )
        return None
    return payload
