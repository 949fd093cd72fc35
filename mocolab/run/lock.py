"""One writer per run folder: `run.lock`, holding the writer's pid, host and start time.

Two runs into one output_dir (two `python -m mocolab` started together, notebook 02 run twice, a sweep
rerun while its runs still train) would both train and overwrite each other's checkpoints and logs. A
job takes the lock before its work (`held`), creating the file exclusively, and removes it at the end,
however the job ends. A second job finds it and is refused with the holder named. A lock whose process
is gone (killed with SIGKILL, a machine that rebooted) is taken over, saying so; a lock of another host
cannot be checked from here, so the message says how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..settings import ConfigError

NAME = "run.lock"


def holder(folder: str | Path) -> dict | None:
    """The live job that holds `folder`'s lock ({"pid", "host", "started"}), or None: no lock, or a stale one."""
    info = _read(Path(folder) / NAME)
    return info if info is not None and not _stale(info) else None


def check_free(folder: str | Path) -> None:
    """Refuse, naming the holder, when another live job writes into `folder` (a preflight's check)."""
    info = holder(folder)
    if info is not None and info["pid"] != os.getpid():
        raise ConfigError(
            f"{folder} is in use: a run started {info['started']} by process {info['pid']} on {info['host']} "
            f"writes into it. Wait for it to end or stop it, or choose another output_dir"
            + (
                f"; if that process no longer runs on {info['host']}, delete {Path(folder) / NAME}"
                if info["host"] != socket.gethostname()
                else ""
            )
        )


@contextmanager
def held(folder: str | Path):
    """Hold `folder`'s lock while the block runs (refused when another live job holds it)."""
    path = Path(folder) / NAME
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one creator wins
        except FileExistsError:
            info = _read(path)
            check_free(folder)  # raises unless the lock is stale or this process's own
            if info is not None and info["pid"] != os.getpid():
                warnings.warn(
                    f"took over {path} from process {info['pid']} on {info['host']}, which no longer runs "
                    f"(started {info['started']}; it was killed before it could remove its lock)",
                    stacklevel=3,
                )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        break
    try:
        yield
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)
        if created and not any(path.parent.iterdir()):  # a job refused before it wrote leaves no folder behind
            path.parent.rmdir()


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        if isinstance(info, dict) and {"pid", "host", "started"} <= set(info):
            return info
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pass
    return {"pid": -1, "host": socket.gethostname(), "started": "?"}  # half written by a killed job: nobody's


def _stale(info: dict) -> bool:
    """A lock of this host whose process is gone. (Another host's cannot be checked: never stale here.)"""
    if info["host"] != socket.gethostname():
        return False
    if info["pid"] <= 0:
        return True
    try:
        os.kill(info["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's
        return False
    return False
