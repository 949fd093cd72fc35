"""Shared fixtures. Real-data tests read CIFAR-10 as an ImageFolder tree from
$MOCOLAB_CIFAR10, by default ../shared/data/cifar10 beside the repository."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist (make test runs two workers) each worker takes its share of the cores, so that two
    workers training at once do not each start a thread per core and slow each other down."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the notebook kernels and processes a test starts
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    root = Path(os.environ.get("MOCOLAB_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        pytest.fail(
            f"real-data tests need CIFAR-10 as an ImageFolder (train/, test/) at {root}; "
            f"set MOCOLAB_CIFAR10 to its folder"
        )
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(cifar10_root, tmp_path_factory) -> Path:
    """A checkpoint of one quick epoch on 64 real images (ResNet-18, CIFAR stem), for the evaluation tests."""
    from mocolab import make_config, pretrain

    out = tmp_path_factory.mktemp("pretrain")
    cfg = make_config(
        "tiny", dataset="imagefolder", data_root=str(cifar10_root), gpus=0, knn_every=0, epochs=1, output_dir=str(out)
    )
    pretrain(cfg, progress=False)
    return out / "checkpoint_last.pt"


def tiny(cifar10_root, tmp_path, **kw):
    """The tiny preset (CIFAR-10 images at 16 px, ResNet-18, batch 16, K 64) on the CPU, in tmp_path/run."""
    from mocolab import make_config

    values = dict(dataset="imagefolder", gpus=0, data_root=str(cifar10_root), output_dir=str(tmp_path / "run"))
    return make_config("tiny", **{**values, **kw})


def write_image_folder(
    root: Path, classes=("cat", "dog"), per_class=4, size=32, splits=("train", "val"), seed=0
) -> Path:
    """A tiny ImageFolder tree of random-noise JPEGs, for bad-input and layout tests."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.jpg")
    return root


@pytest.fixture(autouse=True, scope="session")
def _cache_in_a_temporary_folder(tmp_path_factory):
    """The device data path's uint8 cache goes to a session folder, not ~/.cache."""
    os.environ["MOCOLAB_CACHE"] = str(tmp_path_factory.mktemp("mocolab_cache"))
    yield


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _no_downloads(tmp_path_factory):
    """Tests never download: published checkpoints are looked for in an empty session folder, and fetch
    refuses to reach the network (the download tests serve files from 127.0.0.1 and lift this themselves)."""
    os.environ["MOCOLAB_WEIGHTS"] = str(tmp_path_factory.mktemp("weights_cache"))
    os.environ["MOCOLAB_OFFLINE"] = "1"
    yield
