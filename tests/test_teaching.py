"""The teaching checkpoint: the shipped file is the registry's, it has learnt, and `compact` keeps the encoder."""

from __future__ import annotations

import pytest
import torch

from mocolab import weights
from mocolab.run import checkpoint as ckpt
from mocolab.ui.notebook import find_checkpoint
from mocolab.ui.project import DEMO_CHECKPOINT
from mocolab.weights import teaching


def test_the_shipped_checkpoint_loads_by_name_and_is_the_registered_file():
    model = weights.load(weights.TEACHING)
    assert model.published is weights.entry(weights.TEACHING) and model.path == teaching.FILE
    assert (model.arch, model.cifar_stem, model.image_size, model.has_head) == ("resnet10_w16", True, 32, True)
    assert model.epochs_trained == model.config.epochs == 60 and model.config.preset == "cifar10_cpu"
    assert (model.dataset, model.data_root) == ("cifar10", "data")  # data a user can get, not this machine's
    assert weights.load(teaching.FILE).published.name == weights.TEACHING  # found by its checksum from a path too
    assert "teaching_cifar10: mocolab's teaching checkpoint" in model.summary()
    stored = ckpt.read(teaching.FILE)
    assert stored["kind"] == "encoder" and stored["precision"] == "fp16"
    assert {v.dtype for v in stored["model"].values() if v.is_floating_point()} == {torch.float16}
    assert all(k.startswith("encoder_q.") for k in stored["model"]) and "optimizer" not in stored
    assert teaching.FILE.stat().st_size < 1_000_000


def test_its_metrics_csv_is_its_history_and_shows_it_learnt():
    rows = teaching.history()
    stored = ckpt.read(teaching.FILE)["history"]
    assert [r["epoch"] for r in rows] == [float(r["epoch"]) for r in stored] == [float(e) for e in range(61)]
    assert [r["knn_top1"] for r in rows] == pytest.approx([r["knn_top1"] for r in stored])
    assert rows[-1]["knn_top1"] > rows[0]["knn_top1"] + 20  # 58.1 against the random network's 27.8
    assert rows[-1]["loss"] < rows[1]["loss"] - 2


def test_compact_keeps_the_query_encoder_and_cannot_be_resumed(tiny_checkpoint, tmp_path):
    images = torch.randn(4, 3, 32, 32)
    original = weights.load(tiny_checkpoint).encoder
    full = weights.load(teaching.compact(tiny_checkpoint, tmp_path / "fp32.pt", half=False)).encoder
    half = weights.load(teaching.compact(tiny_checkpoint, tmp_path / "fp16.pt", data_root="data")).encoder
    with torch.no_grad():
        expected = original(images)
        assert torch.equal(full(images), expected)  # fp32: the same tensors, the same features
        assert torch.allclose(half(images), expected, atol=2e-2)  # fp16 weights, computed in fp32
        assert not torch.equal(half(images), expected)
    assert (tmp_path / "fp16.pt").stat().st_size < 0.6 * (tmp_path / "fp32.pt").stat().st_size
    with pytest.raises(ckpt.CheckpointError, match="encoder export .*can be evaluated but not resumed"):
        ckpt.load_pretraining(tmp_path / "fp16.pt")


def test_notebooks_fall_back_to_it_only_for_the_default_demo_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOCOLAB_HOME", str(tmp_path))
    assert find_checkpoint(DEMO_CHECKPOINT, fallback=weights.TEACHING) == weights.TEACHING
    assert f"{tmp_path}/runs/demo/checkpoint_last.pt does not exist yet" in capsys.readouterr().out
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):  # a path the user typed is not replaced
        find_checkpoint("runs/mine/checkpoint_last.pt", fallback=weights.TEACHING)
    demo = tmp_path / DEMO_CHECKPOINT
    demo.parent.mkdir(parents=True)
    demo.write_bytes(b"")
    assert find_checkpoint(DEMO_CHECKPOINT, fallback=weights.TEACHING) == str(demo)  # a run there wins


def test_a_missing_packaged_file_says_to_reinstall(monkeypatch, tmp_path):
    import dataclasses

    from mocolab.weights import download

    gone = dataclasses.replace(weights.entry(weights.TEACHING), packaged="teaching/gone.pt")
    with pytest.raises(download.DownloadError, match="ships with mocolab, but .*gone.pt is missing .*reinstall"):
        download.fetch(gone)
