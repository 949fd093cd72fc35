"""A hand-gathered photo folder, end to end: every data path that runs on a CPU pretrains on it, the whole
evaluation suite runs on the checkpoint, and the run and the evaluation say which files they skipped, once."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mocolab import make_config, pretrain
from mocolab.run import unreadable
from mocolab.evaluate.suite import BENCHMARKS, evaluate

CLASSES = ("cat", "dog house", "café")  # a space and a non-ASCII letter in class names


def messy_folder(root, one_size: bool):
    """Good images in every format a phone or the web gives (JPEG, .JPG, PNG, grayscale, CMYK, RGBA, nested
    folders; with one_size=False also large and tiny ones), and in each split a truncated JPEG, an empty .jpg
    and a text file named .png. Returns (root, the bad files)."""
    rng = np.random.default_rng(0)
    bad = []
    for split, per_class in (("train", 12), ("test", 6)):
        for c in CLASSES:
            folder = root / split / c
            (folder / "nested" / "deeper").mkdir(parents=True)

            def noise(w, h):
                return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

            sizes = [(32, 32)] * per_class if one_size else [(32, 32), (200, 150), (3, 2), (40, 64)] * (per_class // 4)
            for i, (w, h) in enumerate(sizes):
                image = noise(w, h)
                kind = i % 6
                if kind == 0:
                    image.save(folder / f"{i:03d}.jpg")
                elif kind == 1:
                    image.save(folder / f"{i:03d}.JPG")
                elif kind == 2:
                    image.save(folder / "nested" / f"{i:03d}.png")
                elif kind == 3:
                    image.convert("L").save(folder / f"grey {i:03d}.jpg")
                elif kind == 4:
                    image.convert("CMYK").save(folder / "nested" / "deeper" / f"{i:03d}.jpg")
                else:
                    image.convert("RGBA").save(folder / f"alpha_{i:03d}.png")
        good = next((root / split / CLASSES[0]).glob("*.jpg")).read_bytes()
        files = {
            root / split / CLASSES[0] / "truncated.jpg": good[: len(good) // 2],
            root / split / CLASSES[1] / "empty.jpg": b"",
            root / split / CLASSES[2] / "notes.png": b"these are my notes, not a picture",
        }
        for path, data in files.items():
            path.write_bytes(data)
            bad.append(str(path))
    return root, sorted(bad)


def reported(text: str) -> list[str]:
    """Every file named by a 'skipping unreadable image' warning in a process's stderr."""
    return [
        line.split("skipping unreadable image ")[1].split(": ")[0]
        for line in text.splitlines()
        if "skipping unreadable image " in line
    ]


def pretrain_in_a_process(settings: dict) -> str:
    """pretrain(make_config("cifar10_demo", **settings)) in a fresh Python, as a user runs it; its stderr.
    (Inside pytest, warnings raised in forked loader workers are recorded there and lost.)"""
    code = (
        "import json, sys; from mocolab import make_config, pretrain; "
        "pretrain(make_config('cifar10_demo', **json.loads(sys.argv[1])), progress=False)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("path", ["cpu", "jpeg", "device"])
def test_a_messy_folder_pretrains_on_every_path_and_evaluates_in_full(path, tmp_path, monkeypatch):
    monkeypatch.setenv(unreadable.SHARE_ENV, "0.1")  # 3 bad files of 39 per split: allowed for this test
    root, bad = messy_folder(tmp_path / "photos", one_size=path == "device")
    run_dir = tmp_path / "run"
    stderr = pretrain_in_a_process(
        dict(
            dataset="imagefolder",
            data_root=str(root),
            data_path=path,
            gpus=0,
            image_size=16,
            batch_size=8,
            K=16,
            bn_splits=2,
            train_subset=0,
            epochs=2,
            knn_every=1,
            knn_k=5,
            workers=2 if path == "cpu" else 0,
            output_dir=str(run_dir),
        )
    )
    # Each bad file warned about once, over two epochs, two loader workers and the kNN monitor.
    names = reported(stderr)
    assert sorted(names) == bad
    config = json.loads((run_dir / "config.json").read_text())
    assert sorted(config["unreadable_files"]) == bad
    assert config["unreadable_files"][str(root / "train" / "dog house" / "empty.jpg")] == "the file is empty"
    assert config["unreadable_files"][str(root / "test" / "café" / "notes.png")].startswith("not an image file")
    assert "truncated" in config["unreadable_files"][str(root / "train" / "cat" / "truncated.jpg")]
    log = (run_dir / "log.txt").read_text()
    listed = re.findall(r"skipped (\d+) unreadable image file\(s\)", log)
    assert sum(map(int, listed)) == len(bad) and all(name in log for name in bad)
    assert re.search(r"^epoch 2/2 .*kNN", log, re.M)

    with pytest.warns(UserWarning) as caught:
        results = evaluate(
            checkpoint=str(run_dir / "checkpoint_last.pt"),
            dataset="imagefolder",
            data_root=str(root),
            image_size=16,
            svm_layers=("feat5", "avgpool"),
            knn_ks=(5,),
            lowshot_ks=(1,),
            lowshot_samples=1,
            probe_epochs=1,
            probe_lr=0.01,
            output_dir=str(tmp_path / "eval"),
            workers=0,
            progress=False,
        )
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["errors"] == {} and all(name in saved for name in BENCHMARKS)
    assert sorted(saved["unreadable_files"]) == bad
    assert (
        sorted(
            str(w.message).split("skipping unreadable image ")[1].split(": ")[0]
            for w in caught
            if "skipping unreadable image" in str(w.message)
        )
        == bad
    )  # each once
    files = {split: sum(1 for f in (root / split).rglob("*") if f.is_file()) for split in ("train", "test")}
    # A skipped file's place is taken by the next readable image (the loaders keep their length).
    assert saved["knn"]["data"] == {"bank": files["train"], "test": files["test"], "classes": 3}
    assert np.isfinite(results["linear"]["protocols"]["avgpool"]["top1"]["avgpool"])


@pytest.mark.slow
def test_resumed_runs_keep_the_record_of_skipped_files(tmp_path, monkeypatch):
    monkeypatch.setenv(unreadable.SHARE_ENV, "0.1")
    root, bad = messy_folder(tmp_path / "photos", one_size=True)
    values = dict(
        dataset="imagefolder",
        data_root=str(root),
        data_path="cpu",
        gpus=0,
        image_size=16,
        batch_size=8,
        K=16,
        bn_splits=2,
        train_subset=0,
        knn_every=0,
        workers=0,
        output_dir=str(tmp_path / "run"),
    )
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        pretrain(make_config("cifar10_demo", epochs=1, **values), progress=False)
    pretrain(make_config("cifar10_demo", epochs=2, resume=True, **values), progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    train_bad = [name for name in bad if "/train/" in name]
    assert sorted(config["unreadable_files"]) == train_bad  # the resumed run rewrote config.json and kept them
    log = (tmp_path / "run" / "log.txt").read_text()
    assert all(log.count(name) == 1 for name in train_bad)  # logged once, not again by the resumed run
