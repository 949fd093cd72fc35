"""The project folder: where the notebooks' relative paths (data, runs, checkpoints) point.

JupyterLab starts a notebook's kernel in the notebook's own folder (`notebooks/`),
papermill and `make demo` in the folder they are called from (the clone's root).
If relative paths followed the kernel's folder, notebook 02 run in JupyterLab would
write `notebooks/runs/demo` while `make demo` writes `runs/demo`, and 03/04 would
find neither. So every notebook resolves its paths against one folder:

1. `$MOCOLAB_HOME`, when set;
2. else the mocolab clone the kernel runs in: the nearest of the working folder and
   its parents that holds `pyproject.toml` and `mocolab/__init__.py`;
3. else the working folder itself (mocolab installed from a wheel, e.g. on Colab).

Command-line jobs (`python -m mocolab ...`) keep the usual meaning of a relative
path: the working folder.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "MOCOLAB_HOME"
DEMO_RUN = "runs/demo"  # where notebook 02 and `make demo` write by default, and 03/04 look
DEMO_CHECKPOINT = f"{DEMO_RUN}/checkpoint_last.pt"


def is_clone(folder: Path) -> bool:
    """A mocolab source tree: its packaging file beside the package."""
    return (folder / "pyproject.toml").is_file() and (folder / "mocolab" / "__init__.py").is_file()


def home(start: str | Path | None = None) -> Path:
    """The project folder (see the module's docstring), absolute."""
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if is_clone(folder)), here)


def project_path(path: str | Path | None, start: str | Path | None = None) -> str | None:
    """`path` made absolute against the project folder; absolute paths, "" and None pass through."""
    if path is None or str(path) == "":
        return path
    path = Path(path).expanduser()
    return str(path if path.is_absolute() else home(start) / path)
