"""The kNN monitor read in a thread while the next epoch trains (knn_background): the run's readings, weights and
RNG those of a run that reads in line, and no reading lost to a crash, wherever it falls."""

import pytest
import torch

import mocolab.train
from mocolab import pretrain
from mocolab.background_monitor import BackgroundMonitor
from mocolab.run.checkpoint import load_checkpoint
from mocolab.settings import ConfigError
from test_preemption import assert_same_run, crashing_in_step, tiny


def monitored(cifar10_root, folder, **kw):
    """tiny at CIFAR's 32 px on the device path, so that the kNN sets are held on the device; with the probe.
    2 epochs of 4 steps: epoch 1's reading is made in the background, the last epoch's in line."""
    values = dict(epochs=2, data_path="device", image_size=32, online_probe=True)
    return tiny(cifar10_root, folder, **{**values, **kw})


@pytest.fixture(scope="module")
def in_line(cifar10_root, tmp_path_factory):
    """The folder of the run that reads its monitor in line: what every run below must equal."""
    folder = tmp_path_factory.mktemp("in_line")
    pretrain(monitored(cifar10_root, folder, knn_background=0), progress=False)
    return folder


def log_of(folder) -> str:
    return (folder / "log.txt").read_text()


@pytest.mark.slow
def test_readings_in_the_background_are_those_read_in_line(cifar10_root, in_line, tmp_path):
    beside = pretrain(monitored(cifar10_root, tmp_path / "b", knn_background=1), progress=False)
    assert_same_run(in_line, tmp_path / "b")  # kNN and probe top-1 of every epoch (metrics.csv), weights, RNG
    assert all(r["knn_top1"] is not None and r["probe_top1"] is not None for r in beside.history[1:])
    assert "epoch 1/2  kNN" in log_of(tmp_path / "b") and "read beside the next epoch's steps" in log_of(tmp_path / "b")
    assert "read beside" not in log_of(in_line)


@pytest.mark.slow
def test_a_crash_before_the_reading_lands_reads_it_on_resuming(cifar10_root, in_line, tmp_path, monkeypatch):
    """A crash in the first step of epoch 2: epoch 1's checkpoint was written with its reading in flight."""
    monkeypatch.setattr(mocolab.train.Trainer, "step", crashing_in_step(5))  # 4 steps an epoch
    with pytest.raises(KeyboardInterrupt):
        pretrain(monitored(cifar10_root, tmp_path / "b", knn_background=1), progress=False)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert state["epoch"] == 1 and state["history"][-1]["knn_top1"] is None  # pending
    pretrain(monitored(cifar10_root, tmp_path / "b", knn_background=1, resume=True), progress=False)
    assert_same_run(in_line, tmp_path / "b")
    assert "read on resuming, from the same weights" in log_of(tmp_path / "b")


@pytest.mark.slow
def test_a_checkpoint_inside_an_epoch_waits_for_the_reading(cifar10_root, in_line, tmp_path, monkeypatch):
    monkeypatch.setattr(mocolab.train.Trainer, "step", crashing_in_step(7))
    ahead = dict(knn_background=1, checkpoint_every_steps=3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(monitored(cifar10_root, tmp_path / "b", **ahead), progress=False)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert state["position"]["step"] == 2 and state["history"][-1]["knn_top1"] is not None  # epoch 1's, filled
    pretrain(monitored(cifar10_root, tmp_path / "b", resume=True, **ahead), progress=False)
    assert_same_run(in_line, tmp_path / "b")


def test_an_error_in_the_reading_is_raised_when_it_is_waited_for():
    def read(encoder, probe):
        raise RuntimeError("CUDA out of memory")

    monitor, row = BackgroundMonitor(read, "cpu"), {"epoch": 1, "knn_top1": None}
    monitor.start(torch.nn.Linear(2, 2), None, row)
    with pytest.raises(RuntimeError, match="out of memory"):
        monitor.finish()
    assert monitor.finish() is None and row["knn_top1"] is None  # nothing in flight any more


def test_the_reading_is_of_the_weights_at_its_start():
    """The thread reads a copy: the training that goes on meanwhile does not reach it."""
    encoder = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.ones_(encoder.weight)

    def read(copy, probe):
        return {"knn_top1": float(copy.weight.detach().sum())}

    monitor, row = BackgroundMonitor(read, "cpu"), {"epoch": 1, "knn_top1": None}
    monitor.start(encoder, None, row)
    with torch.no_grad():
        encoder.weight.mul_(10)  # the next epoch's steps
    with pytest.raises(RuntimeError, match="epoch 1 is still in flight"):
        monitor.start(encoder, None, {"epoch": 2})  # one at a time: the first must be finished (and logged)
    assert monitor.finish() is row and row["knn_top1"] == 2.0 and row["knn_s"] >= 0


def test_knn_background_is_checked():
    with pytest.raises(ConfigError, match="knn_background must be"):
        tiny("data", "out", knn_background=2)
