"""Checkpoints: everything needed to continue a run exactly, written atomically.

A pretraining checkpoint holds the MoCo module (both encoders, the queue and
its pointer), the optimiser, the epoch reached, the RNG states, the config and
the metric history; a fine-tuning checkpoint the model, optimiser, iteration
and logged rows; an encoder export (weights.teaching.compact) the query
encoder, config and history of a pretraining run, nothing a resume needs.
Each records its `kind`. A checkpoint is written to a
temporary file and renamed into place, so a crash while saving leaves the
previous checkpoint intact.

Every file is read as data, never as code (`read`): torch.load(weights_only=True),
which rebuilds tensors and plain Python values only; a file whose unpickling
would call anything else is refused before it runs. So the RNG states are saved
as tensors and plain values. Foreign files (NumPy arrays in OpenMMLab's
checkpoints, detectron2's plain pickles) are mocolab.weights.safe_read's.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import random
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

KINDS = ("pretraining", "fine-tuning", "encoder")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not fit the run that tries to load it."""


class DiskFullError(CheckpointError):
    """A write failed for want of space; its partial file is removed and the previous version is untouched."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside path, flush to disk, then rename over path (atomic on POSIX)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | Path, write, mode: str = "wb") -> None:
    """write(f) into a temporary file beside path, flushed to disk, then renamed over path: a crash leaves the
    previous version. The temporary name is unique (pid and a random part), so two writers never share one;
    a failed write removes its temporary file, and a full disk is a DiskFullError that says so."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        full = _out_of_space(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFullError(_no_space(path, written)) from err
        raise


def _out_of_space(err: BaseException, folder: Path) -> bool:
    """ENOSPC or EDQUOT anywhere in the chain, or torch's zip writer failing with (next to) no space left."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, RuntimeError) and shutil.disk_usage(folder).free < 2**20:  # torch's words vary
            return True
        err = err.__cause__ or err.__context__
    return False


def _no_space(path: Path, written: int) -> str:
    mount = path.resolve().parent
    while not os.path.ismount(mount):
        mount = mount.parent
    free, mb = shutil.disk_usage(mount).free, 2**20
    need = f"about {path.stat().st_size / mb:.1f} MB" if path.exists() else f"more than {written / mb:.1f} MB"
    kept = f"{path} is untouched and still holds the last good version" if path.exists() else "nothing was kept"
    return (
        f"no space left on {mount} ({free / mb:.1f} MB free) to write {path.name}, which needs {need}; "
        f"the partial file is removed and {kept}. Free some space (or choose an output_dir on another "
        f"file system) and resume."
    )


def rng_state() -> dict:
    """The RNG states as tensors and plain values, so that the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------
# Reading a file as data
# ----------------------------------------------------------------------------


class UnsafeFileError(CheckpointError):
    """A file whose unpickling would run code (call a function or build an object that is not data)."""


def read(path: str | Path, content: bytes | None = None, allowed: dict | None = None):
    """The content of a torch file, read as data only; a CheckpointError names what is wrong.

    Refused: a file whose unpickling would call anything but the constructors of tensors and plain Python
    values (UnsafeFileError; nothing in it has run), a web page saved under a checkpoint's name, a truncated
    or otherwise unreadable file. content: the file's bytes, already read (so that what is loaded and what is
    hashed are the same bytes, even while a run replaces the file); path then only names it. allowed: more
    constructors by the name a pickle gives them (mocolab.weights.safe_read's NumPy arrays, for foreign files).
    """
    path = Path(path)
    first_bytes(path, content)  # a missing file or a web page is named before torch tries it
    with read_as_data(path):
        with torch.serialization.safe_globals([(obj, name) for name, obj in (allowed or {}).items()]):
            return torch.load(path if content is None else io.BytesIO(content), map_location="cpu", weights_only=True)


def first_bytes(path: Path, content: bytes | None) -> bytes:
    """The first 512 bytes of the file (or of `content`), refusing a missing file and a web page."""
    if content is None and not path.is_file():
        raise CheckpointError(f"no checkpoint at {path.resolve()}")
    if content is None:
        with open(path, "rb") as f:
            head = f.read(512)
    else:
        head = content[:512]
    if head.lstrip()[:1] == b"<" and re.search(rb"<(!doctype|html|\?xml)", head, re.I):
        raise CheckpointError(
            f"{path} is a web page (HTML), not a checkpoint: the download went wrong (a login or "
            f"error page). Delete it and download the file again."
        )
    return head


@contextmanager
def read_as_data(path: Path):
    """Turn what unpickling `path` raised into a CheckpointError: UnsafeFileError for a refused global."""
    try:
        yield
    except pickle.UnpicklingError as err:
        # torch names the global it refused (and whether its module is blocked); safe_read's unpickler likewise.
        unsafe = re.search(r"(?:unsupported global: GLOBAL|unsupported GLOBAL|refused global) ([\w.]+)", str(err), re.I)
        # torch's own rebuild functions are allowed: a cut-off name of one means the file ends mid-pickle.
        if unsafe and not unsafe.group(1).startswith("torch."):
            raise UnsafeFileError(
                f"refused {path}: reading it would run code ({unsafe.group(1)}), and mocolab "
                f"reads checkpoints as data only (tensors, arrays, numbers, text). Nothing in it has run. If the "
                f"file is yours, save its weights alone (torch.save(model.state_dict(), path)) with the program "
                f"that wrote it and load that file."
            ) from None
        raise _unreadable(path, err) from err
    except CheckpointError:
        raise
    except Exception as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    # torch's weights-only message is about trusting the file; what matters here is that its pickle is damaged.
    detail = "its pickle is cut off or damaged" if "Weights only load failed" in str(err) else str(err)[:200]
    return CheckpointError(
        f"checkpoint {path} cannot be read ({type(err).__name__}: {detail}); it may be "
        f"truncated (an interrupted download or write): download or copy it again. For a run's "
        f"checkpoint_last.pt, the checkpoint_NNNN.pt files beside it are earlier copies."
    )


def first_non_finite(tensors: dict) -> str | None:
    """ "name: 12 NaN and 0 infinite of 1728 values" for the first floating tensor holding NaN or Inf, else None."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            return f"{name}: {nan} NaN and {inf} infinite of {t.numel()} values"
    return None


def check_finite(tensors: dict, path) -> None:
    """Refuse weights holding NaN or Inf (a run that diverged): evaluated, they read as chance; resumed, as
    a run that goes on."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(
            f"{path} holds weights that are not finite numbers, so it is no model to evaluate, export, fine-tune "
            f"or resume (first bad tensor {bad}): the run that wrote it diverged. Use a checkpoint from before "
            f"(a run's checkpoint_NNNN.pt) and a lower lr."
        )


def load_checkpoint(path: str | Path) -> dict:
    """A mocolab checkpoint read as data on the CPU (`read`); a clear error when it is absent or unreadable."""
    return read(path)


def kind_of(state: dict) -> str | None:
    """ "pretraining", "fine-tuning" or "encoder", as the checkpoint's `kind` says, or None for any other file."""
    return state["kind"] if isinstance(state, dict) and state.get("kind") in KINDS else None


def describe(state) -> str:
    """What a loaded torch file is, in words, for an error about a file of the wrong kind."""
    kind = kind_of(state)
    if kind == "fine-tuning":
        task = state.get("config", {}).get("task", "?")
        return f"a mocolab fine-tuning checkpoint (task {task})"
    if kind == "encoder":
        return (
            "a mocolab encoder export (the query encoder alone: no key encoder, queue or optimiser, so it "
            "can be evaluated but not resumed)"
        )
    if kind is not None:
        return f"a mocolab {kind} checkpoint"
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return (
            f"a bare state dict of {len(state)} tensors (weights only, such as torchvision's "
            f"model.state_dict()), without the config mocolab needs"
        )
    if isinstance(state, dict):
        keys = ", ".join(sorted(map(str, state))[:6])
        return f"not a mocolab checkpoint (a dict with keys {keys}{', ...' if len(state) > 6 else ''})"
    return f"not a mocolab checkpoint (a {type(state).__name__})"


def load_pretraining(path: str | Path) -> dict:
    """A pretraining checkpoint, or a CheckpointError that says what the file is instead."""
    state = load_checkpoint(path)
    if kind_of(state) != "pretraining":
        raise CheckpointError(
            f"{path} is {describe(state)}; pass the checkpoint_last.pt of a pretraining run "
            f"(notebook 02 or `python -m mocolab`)"
        )
    check_finite(state["model"], path)
    return state


def check_compatible(saved_config: dict, config: dict, fields, path) -> None:
    """Fail, listing the differences, if the checkpoint's model differs from the config's in one of `fields`
    (the config's model-defining fields, config.MODEL_FIELDS)."""
    diffs = [
        f"{name}: checkpoint {saved_config.get(name)!r}, config {config[name]!r}"
        for name in fields
        if saved_config.get(name) != config[name]
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} is of another model ({'; '.join(diffs)}); "
            f"use the same settings, or another output_dir for a new run."
        )


def load_state(module: torch.nn.Module, state_dict: dict, path) -> None:
    """load_state_dict with the mismatching keys and shapes listed in the error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state_dict.keys()
        if own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or shapes:

        def few(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        raise CheckpointError(
            f"checkpoint {path} does not fit this model: missing {few(missing) or 'none'}; "
            f"unexpected {few(unexpected) or 'none'}; shape mismatches {few(shapes) or 'none'}"
        )
    module.load_state_dict(state_dict)
