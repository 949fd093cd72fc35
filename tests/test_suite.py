"""The whole evaluation from one checkpoint: results.json, tables, VOC layout, notebook 03."""

import json
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest
import torch

from mocolab import weights
from mocolab.evaluate.embedding import rank_me
from mocolab.evaluate.suite import EvalConfig, evaluate, tables
from mocolab.evaluate.voc import VOC_CLASSES
from test_features import write_voc

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def small_voc(root):
    """60 trainval and 40 test images; class c is present in every 20th image from c on."""
    for split, n in (("trainval", 60), ("test", 40)):
        ids = [f"{split[:2]}{i:04d}" for i in range(n)]
        values = {name: [1 if i % 20 == c else -1 for i in range(n)] for c, name in enumerate(VOC_CLASSES)}
        values["cat"][1] = 0  # one difficult-only image
        write_voc(root, ids, split, values)
    return root


@pytest.mark.slow
def test_evaluate_on_voc_layout_writes_results_and_reference_tables(checkpoint, cifar10_root, tmp_path):
    results = evaluate(
        checkpoint=str(checkpoint),
        dataset="imagefolder",
        data_root=str(cifar10_root),
        voc_root=str(small_voc(tmp_path / "VOCdevkit")),
        benchmarks=("knn", "svm", "lowshot"),
        svm_layers=("feat5", "avgpool"),
        train_size=200,
        test_size=100,
        lowshot_ks=(1, 2),
        lowshot_samples=2,
        output_dir=str(tmp_path / "eval"),
        workers=0,
        progress=False,
    )
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    svm = saved["svm"]
    assert saved["svm_data"] == "voc07" and set(svm["layers"]) == {"feat5", "avgpool"}
    assert len(svm["layers"]["feat5"]["ap"]) == 20 and svm["layers"]["feat5"]["classes"][0] == "aeroplane"
    assert svm["data"] == {"train": 60, "test": 40, "classes": 20} and svm["settings"]["folds"] == 3
    assert len(svm["settings"]["costs"]) == 19
    # the reference's best layer is a feat layer, however avgpool scores: here the only one measured
    assert svm["best_layer"] == "feat5" and saved["lowshot"]["layer"] == "feat5"
    assert set(saved["lowshot"]["by_k"]) == {"1", "2"} and saved["lowshot"]["settings"]["samples"] == 2
    knn = saved["knn"]
    assert set(knn["features"]) == {"avgpool", "head"} and set(knn["features"]["avgpool"]) == {"10", "20", "100", "200"}
    assert knn["settings"]["T"] == 0.07 and knn["data"] == {"bank": 200, "test": 100, "classes": 10}
    # What the run is: the checkpoint's content hash, the code version, torch, the device.
    assert saved["encoder"] == weights.load(checkpoint).identity and saved["code_version"] and saved["torch"]
    assert saved["device"] == "cpu" and saved["config"]["train_size"] == 200
    text = tables(results)
    assert "VOC07" in text and "| feat5 |" in text and "84.04" in text  # the reference beside feat5
    assert "on test (reference)" in text and "by CV in sample" in text and "43.14" in text


@pytest.mark.slow
def test_evaluate_one_vs_rest_on_cifar10_with_linear_probes(checkpoint, cifar10_root, tmp_path):
    results = evaluate(
        checkpoint=str(checkpoint),
        dataset="imagefolder",
        data_root=str(cifar10_root),
        benchmarks=("svm", "linear", "rankme"),
        svm_layers=("avgpool",),
        train_size=150,
        test_size=60,
        probe_epochs=1,
        probe_lr=0.01,
        output_dir=str(tmp_path),
        workers=0,
        progress=False,
    )
    svm = results["svm"]["layers"]["avgpool"]
    assert results["svm_data"] == "imagefolder" and svm["ap"] and svm["mAP"] == pytest.approx(np.mean(svm["ap"]))
    linear = results["linear"]["protocols"]
    assert set(linear["multihead"]["top1"]) == {f"feat{i}" for i in range(1, 6)}
    assert np.isfinite(linear["avgpool"]["top1"]["avgpool"])
    assert results["linear"]["settings"]["recipes"]["avgpool"]["lr"] == 0.01  # probe_lr replaced the protocol's 30
    assert results["linear"]["settings"]["recipes"]["multihead"]["lr"] == 0.01  # the protocol's own
    # RankMe: the effective rank of the training images' avgpool features, as cached (kNN's bank would share them).
    stored = [torch.load(p, weights_only=True) for p in (tmp_path / "feature_cache").iterdir()]
    cached = next(c for c in stored if c["key"]["dataset"].endswith(":train") and c["key"]["layer"] == "avgpool")
    assert results["rankme"]["data"] == {"images": 150, "dims": 512}
    assert results["rankme"]["rankme"] == pytest.approx(rank_me(cached["features"]))
    assert 1 < results["rankme"]["rankme"] < 150
    text = tables(results)
    assert f"| avgpool of the training images | 150 | 512 | {results['rankme']['rankme']:.1f} | 150 |" in text
    assert "67.58" not in text  # CIFAR-10 is not the reference's data: no reference column values
    assert f"| avgpool | {svm['mAP']:.2f} |" in text and "**Linear SVM per layer (imagefolder mAP)**" in text


def test_unknown_settings_are_named_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmarks \\['svn'\\]"):
        evaluate(benchmarks=("svn",), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown evaluation config key 'probe_epoch'; did you mean 'probe_epochs'"):
        evaluate(probe_epoch=3, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="model='moco' evaluates a checkpoint"):
        EvalConfig()
    assert EvalConfig(model="random", lowshot_ks="1, 2", benchmarks="knn,svm").lowshot_ks == (1, 2)  # papermill text
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_03_evaluate_runs_headless(checkpoint, cifar10_root, tmp_path):
    papermill.execute_notebook(
        str(NOTEBOOKS / "03_evaluate.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters=dict(
            checkpoint=str(checkpoint),
            data_root=str(cifar10_root),
            train_size=200,
            test_size=100,
            lowshot_ks="1,2",
            lowshot_samples=2,
            probe_epochs=1,
            probe_lr=0.01,
            workers=0,
            output_dir=str(tmp_path / "eval"),
        ),
    )
    for model in ("moco", "random"):
        assert json.loads((tmp_path / "eval" / model / "results.json").read_text())["svm"]
    assert (tmp_path / "eval" / "low_shot.png").exists() and (tmp_path / "eval" / "svm_layers.png").exists()
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in shown) == 3
    markdown = [str(o.get("data", {}).get("text/markdown", "")) for o in shown]
    moco = json.loads((tmp_path / "eval" / "moco" / "results.json").read_text())
    assert any(m.startswith("### MoCo") and tables(moco) in m for m in markdown)  # the tables, as tables() lays them
    assert any(m.startswith("### random") and "**Linear SVM per layer" in m for m in markdown)


@pytest.mark.slow
def test_a_failing_benchmark_is_recorded_the_others_saved_and_a_rerun_computes_only_what_is_missing(
    checkpoint, tmp_path, monkeypatch
):
    """Images of two sizes (the CIFAR probe recipe now resizes them), an SVM that fails: kNN and the probes
    are still saved; the rerun reuses them and computes the SVM alone."""
    import mocolab.evaluate.suite as suite
    from PIL import Image

    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "data", per_class=12, size=32, splits=("train", "test"))
    for i in range(3):
        Image.new("RGB", (48, 40), (i * 60, 90, 30)).save(root / "train" / "dog" / f"big{i}.jpg")
        Image.new("RGB", (48, 40), (i * 60, 30, 90)).save(root / "test" / "cat" / f"big{i}.jpg")
    settings = dict(
        checkpoint=str(checkpoint),
        dataset="imagefolder",
        data_root=str(root),
        benchmarks=("knn", "svm", "linear"),
        svm_layers=("avgpool",),
        probe_epochs=1,
        probe_lr=0.01,
        knn_ks=(10,),
        output_dir=str(tmp_path / "eval"),
        workers=0,
        progress=False,
    )

    def broken(*args, **kwargs):
        raise RuntimeError("the solver exploded")

    monkeypatch.setattr(suite, "svm_benchmark", broken)
    with pytest.warns(UserWarning, match="benchmark 'svm' failed \\(RuntimeError: the solver exploded\\)"):
        evaluate(**settings)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["errors"] == {"svm": "RuntimeError: the solver exploded"} and "svm" not in saved
    assert "knn" in saved and np.isfinite(saved["linear"]["protocols"]["avgpool"]["top1"]["avgpool"])

    monkeypatch.undo()
    calls = []
    for name in ("knn_benchmark", "svm_benchmark", "linear_benchmark"):
        real = getattr(suite, name)
        monkeypatch.setattr(suite, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    again = evaluate(**settings)
    assert calls == ["svm_benchmark"]  # only the missing benchmark ran
    assert again["errors"] == {} and again["knn"] == saved["knn"] and again["linear"] == saved["linear"]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["svm"]["layers"]["avgpool"]["ap"]
    (root / "test" / "cat" / "big0.jpg").unlink()  # the data changed: nothing is reused
    calls.clear()
    evaluate(**settings)
    assert sorted(calls) == ["knn_benchmark", "linear_benchmark", "svm_benchmark"]  # each ran (in the table's order)
