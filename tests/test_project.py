"""One project folder for every notebook, and a set-up cell that installs mocolab where it is missing."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import papermill
import pytest

import mocolab
from mocolab.run.checkpoint import CheckpointError
from mocolab.ui.notebook import find_checkpoint, training_data
from mocolab.ui.project import home, project_path
from test_notebooks import NOTEBOOKS

REPOSITORY = NOTEBOOKS.parent


def test_the_project_folder_is_the_clone_from_any_folder_inside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MOCOLAB_HOME", raising=False)
    assert home(NOTEBOOKS) == home(REPOSITORY) == REPOSITORY  # JupyterLab's kernel starts in notebooks/
    assert home(tmp_path) == tmp_path  # outside a clone (a wheel install): the working folder
    assert project_path("runs/demo", NOTEBOOKS) == str(REPOSITORY / "runs" / "demo")
    assert project_path("/data/x", NOTEBOOKS) == "/data/x" and project_path(None) is None and project_path("") == ""
    monkeypatch.setenv("MOCOLAB_HOME", str(tmp_path))
    assert home(NOTEBOOKS) == tmp_path and project_path("data") == str(tmp_path / "data")


def test_a_missing_checkpoint_says_where_it_looked_and_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MOCOLAB_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as error:
        find_checkpoint("runs/demo/checkpoint_last.pt")
    message = str(error.value)
    assert f"no checkpoint at {tmp_path}/runs/demo/checkpoint_last.pt" in message
    assert "train one first: run notebook 02 or `make demo`" in message and "resume" not in message


def test_evaluation_defaults_to_the_data_the_checkpoint_was_trained_on(tiny_checkpoint, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("MOCOLAB_HOME", str(tmp_path))
    from mocolab import weights

    saved = torch.load(tiny_checkpoint, weights_only=True)["config"]
    assert find_checkpoint(tiny_checkpoint) == str(tiny_checkpoint)
    model = weights.load(tiny_checkpoint)
    assert training_data(model) == (saved["dataset"], project_path(saved["data_root"]))
    assert training_data(model, "cifar10", "data") == ("cifar10", str(tmp_path / "data"))
    assert find_checkpoint("moco_v2_800ep") == "moco_v2_800ep"  # a published name passes as it is


@pytest.mark.slow
def test_02_started_in_notebooks_writes_into_the_project_folder(cifar10_root, tmp_path, monkeypatch):
    """The kernel runs in notebooks/ (as in JupyterLab); the relative output_dir still lands in the project."""
    monkeypatch.setenv("MOCOLAB_HOME", str(tmp_path))
    papermill.execute_notebook(
        str(NOTEBOOKS / "02_pretrain.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        parameters=dict(
            dataset="imagefolder",
            data_root=str(cifar10_root),
            epochs=1,
            batch_size=16,
            K=64,
            lr=0.01,
            gpus=0,
            workers=0,
            train_subset=32,
            knn_bank_size=64,
            knn_test_size=32,
        ),
    )
    assert (tmp_path / "runs" / "demo" / "checkpoint_last.pt").is_file()  # 02's default, 03/04's default checkpoint
    assert not (NOTEBOOKS / "runs").exists()


def test_every_notebook_starts_with_the_same_set_up_cell_and_the_same_data_defaults():
    cells = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells[path.name] = next(c.source for c in nb.cells if c.cell_type == "code")
        parameters = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        for line in parameters.splitlines():  # papermill cannot parse a line whose comment holds "="
            assert "=" not in line.partition("#")[2], f"{path.name}: {line}"
        if path.name[:2] in ("03", "04"):
            assert "dataset = None" in parameters and 'checkpoint = "runs/demo/checkpoint_last.pt"' in parameters
    assert len(set(cells.values())) == 1 and "Set-up:" in cells["01_augmentations.ipynb"], cells.keys()


def bare_python(tmp_path) -> Path:
    """A Python without mocolab: a new venv that borrows this one's packages (torch, ...) but not its .pth files,
    so mocolab's editable install is not seen, and pip works offline from what is already there."""
    target = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = [p for p in sys.path if p.endswith("site-packages")]
    Path(purelib, "borrowed.pth").write_text("\n".join(here) + "\n")  # paths only: their .pth files do not run
    return python


@pytest.mark.slow
def test_the_set_up_cell_installs_mocolab_from_the_clone_when_it_is_missing(tmp_path):
    python = bare_python(tmp_path)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PYTHONNOUSERSITE": "1"}
    env.pop("MOCOLAB_HOME", None)
    missing = subprocess.run([python, "-c", "import mocolab"], cwd=NOTEBOOKS, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'mocolab'" in missing.stderr
    cell = nbformat.read(NOTEBOOKS / "01_augmentations.ipynb", as_version=4).cells[1].source
    script = tmp_path / "set_up.py"
    script.write_text(cell)
    done = subprocess.run([python, script], cwd=NOTEBOOKS, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"installing mocolab from {REPOSITORY} with pip" in done.stdout
    assert f"mocolab {mocolab.__version__} from {REPOSITORY / 'mocolab'}" in done.stdout
    assert f"project folder {REPOSITORY}" in done.stdout
    again = subprocess.run([python, script], cwd=NOTEBOOKS, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "installing" not in again.stdout  # installed for good: a new kernel finds it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = subprocess.run([sys.executable, "-S", script], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert lost.returncode != 0 and "not inside a mocolab clone" in lost.stderr and "make wheel" in lost.stderr


def test_the_checkpoint_summary_counts_trained_epochs_not_the_epoch_0_row(tiny_checkpoint, tmp_path):
    import torch

    from mocolab import weights

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["history"] = [{"epoch": 0, "knn_top1": 10.0}, *state["history"]]  # a run with the random-network row
    torch.save(state, tmp_path / "checkpoint_last.pt")
    summary = weights.load(tmp_path / "checkpoint_last.pt").summary()
    assert summary.startswith("resnet18, 1 of 1 epochs of tiny") and "(mocolab format" in summary


def test_a_presets_relative_data_root_lands_in_the_project_folder(tmp_path, monkeypatch):
    from mocolab import make_config
    from mocolab.ui.notebook import in_project

    monkeypatch.setenv("MOCOLAB_HOME", str(tmp_path))
    cfg = make_config("cifar10_cpu", output_dir="runs/x")
    moved = in_project(cfg)
    assert (moved.data_root, moved.output_dir) == (str(tmp_path / "data"), str(tmp_path / "runs" / "x"))
    assert {k: v for k, v in moved.to_dict().items() if k not in ("data_root", "output_dir")} == {
        k: v for k, v in cfg.to_dict().items() if k not in ("data_root", "output_dir")
    }
