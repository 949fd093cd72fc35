"""Checkpoints: everything needed to continue a run exactly, written atomically.

A pretraining checkpoint holds the MoCo module (both encoders, the queue and
its pointer), the optimiser, the epoch reached, the RNG states, the config and
the metric history; a fine-tuning checkpoint the model, optimiser, iteration
and logged rows. Each records its `kind`. A checkpoint is written to a
temporary file and renamed into place, so a crash while saving leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

# Config fields that define the shapes of the saved tensors: a resume must match them.
MODEL_FIELDS = ("arch", "cifar_stem", "head", "dim", "K")
KINDS = ("pretraining", "fine-tuning")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not fit the run that tries to load it."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to path.tmp, flush to disk, then rename over path (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on the CPU; a clear error when it is absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path.resolve()}")
    try:
        # weights_only=False: the checkpoint holds numpy and Python RNG states, not just tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}); it may be truncated. "
                              f"checkpoint_NNNN.pt files beside it are earlier copies.") from err


def kind_of(state: dict) -> str | None:
    """"pretraining" or "fine-tuning" (checkpoints written before `kind` was saved are recognised by
    their config: a fine-tuning config names a task, a pretraining one a queue size K), or None."""
    if not isinstance(state, dict):
        return None
    if state.get("kind") in KINDS:
        return state["kind"]
    config = state.get("config")
    if "model" not in state or not isinstance(config, dict):
        return None
    return "fine-tuning" if "task" in config else "pretraining" if "K" in config else None


def describe(state) -> str:
    """What a loaded torch file is, in words, for an error about a file of the wrong kind."""
    kind = kind_of(state)
    if kind == "fine-tuning":
        task = state.get("config", {}).get("task", "?")
        return f"a mocolab fine-tuning checkpoint (task {task})"
    if kind is not None:
        return f"a mocolab {kind} checkpoint"
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return (f"a bare state dict of {len(state)} tensors (weights only, such as torchvision's "
                f"model.state_dict()), without the config mocolab needs")
    if isinstance(state, dict):
        keys = ", ".join(sorted(map(str, state))[:6])
        return f"not a mocolab checkpoint (a dict with keys {keys}{', ...' if len(state) > 6 else ''})"
    return f"not a mocolab checkpoint (a {type(state).__name__})"


def load_pretraining(path: str | Path) -> dict:
    """A pretraining checkpoint, or a CheckpointError that says what the file is instead."""
    state = load_checkpoint(path)
    if kind_of(state) != "pretraining":
        raise CheckpointError(f"{path} is {describe(state)}; pass the checkpoint_last.pt of a pretraining run "
                              f"(notebook 02 or `python -m mocolab`)")
    return state


def check_compatible(saved_config: dict, config: dict, path) -> None:
    """Fail, listing the differences, if the checkpoint's model differs from the config's."""
    diffs = [f"{name}: checkpoint {saved_config.get(name)!r}, config {config[name]!r}"
             for name in MODEL_FIELDS if saved_config.get(name) != config[name]]
    if diffs:
        raise CheckpointError(f"checkpoint {path} is of another model ({'; '.join(diffs)}); "
                              f"use the same settings, or another output_dir for a new run.")


def load_state(module: torch.nn.Module, state_dict: dict, path) -> None:
    """load_state_dict with the mismatching keys and shapes listed in the error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        def few(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
        raise CheckpointError(f"checkpoint {path} does not fit this model: missing {few(missing) or 'none'}; "
                              f"unexpected {few(unexpected) or 'none'}; shape mismatches {few(shapes) or 'none'}")
    module.load_state_dict(state_dict)
