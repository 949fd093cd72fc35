"""Batches made ahead in a thread (mocolab.data.prefetch): the batches made in line, bit for bit; an error raised
at the batch that failed; nothing left running after an epoch is left; a run that makes its batches ahead trains
and resumes exactly as one that makes them in line."""

import dataclasses
import itertools
import threading
import time

import pytest
import torch

import mocolab.train
from conftest import write_image_folder
from mocolab import make_config, pretrain
from mocolab.augment import batched
from mocolab.data import DatasetError, pretrain_batches
from mocolab.data.prefetch import Prefetched, made_ahead
from mocolab.run.checkpoint import load_checkpoint
from mocolab.settings import ConfigError
from test_preemption import assert_same_run, crashing_in_step, tiny

THREAD = "mocolab batches ahead"


def folder_cfg(root, tmp_path, **overrides):
    values = dict(dataset="imagefolder", data_root=str(root), gpus=0, image_size=32, batch_size=8, K=32, bn_splits=2)
    values.update(workers=0, knn_every=0, output_dir=str(tmp_path / "run"))
    return make_config("imagenet_mocov2", **{**values, **overrides})


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for ((a_q, a_k), a_y), ((b_q, b_k), b_y) in zip(a, b):
        assert torch.equal(a_q, b_q) and torch.equal(a_k, b_k) and torch.equal(a_y, b_y)


def no_thread_left() -> bool:
    return not any(t.name == THREAD for t in threading.enumerate())


@pytest.mark.parametrize("path", ["device", "jpeg"])
def test_batches_made_ahead_are_the_batches_made_in_line(path, tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=16, size=40)
    # workers=1 on the jpeg path: its loader's worker process is started and stopped from the thread
    cfg = folder_cfg(root, tmp_path, data_path=path, workers=1 if path == "jpeg" else 0)
    in_line = pretrain_batches(dataclasses.replace(cfg, prefetch=0), torch.device("cpu"))
    ahead = pretrain_batches(dataclasses.replace(cfg, prefetch=2), torch.device("cpu"))
    assert isinstance(ahead, Prefetched) and not isinstance(in_line, Prefetched)
    assert (ahead.path, len(ahead)) == (path, len(in_line)) == (path, 32)
    assert isinstance(pretrain_batches(cfg, torch.device("cpu")), type(in_line))  # prefetch=-1: none on the CPU
    for epoch, start in ((0, 0), (1, 2)):  # from an epoch's start, and from inside one (a resumed run)
        assert_same_batches(list(in_line.epoch(epoch, start)), list(ahead.epoch(epoch, start)))
    assert no_thread_left()


@pytest.mark.slow
def test_the_compiled_augmentation_runs_in_the_thread(tmp_path, monkeypatch):
    """compile=True on a GPU compiles the views where they are made: in the thread. Forced here on the CPU, with
    torch.compile's eager backend (the traced graph)."""
    compiled = batched.compiled
    monkeypatch.setattr(batched, "compiled", lambda fn, r, backend="inductor": compiled(fn, r, "eager"))
    cfg = folder_cfg(write_image_folder(tmp_path / "data", per_class=8, size=40), tmp_path, data_path="jpeg")
    in_line = pretrain_batches(dataclasses.replace(cfg, prefetch=0), torch.device("cpu"))
    ahead = pretrain_batches(dataclasses.replace(cfg, prefetch=2), torch.device("cpu"))
    in_line.compiled = ahead.batches.compiled = True  # what compile=True sets on a GPU
    assert_same_batches(list(in_line.epoch(0)), list(ahead.epoch(0)))


def test_an_error_in_the_thread_is_raised_at_the_batch_it_failed_to_make():
    def make():
        yield 1
        yield 2
        raise DatasetError("100 consecutive unreadable images from /data/train/x.jpg on: is the folder corrupt?")

    batches = made_ahead(make, 2, "cpu")
    assert next(batches) == 1 and next(batches) == 2
    with pytest.raises(DatasetError, match="is the folder corrupt"):
        next(batches)
    assert no_thread_left()


def test_leaving_an_epoch_early_stops_the_thread_and_closes_its_batches_there():
    """The thread starts when the first batch is asked for (not before: a loader started there draws its seed
    from torch's generator then), makes at most `depth` batches beyond the one it is offering, and on close
    closes the batches' iterator in the thread (a loader's workers are shut down there)."""
    events, made = [], []

    def make():
        events.append(("started in", threading.current_thread().name))
        try:
            for i in itertools.count():
                made.append(i)
                yield torch.full((2,), i)
        finally:
            events.append(("closed in", threading.current_thread().name))

    batches = made_ahead(make, 2, "cpu")
    assert events == [] and no_thread_left()
    assert torch.equal(next(batches), torch.zeros(2))
    time.sleep(0.3)  # time for the thread to run ahead as far as it may
    assert 1 <= len(made) <= 1 + 2 + 1  # the one taken, 2 waiting, 1 being offered
    batches.close()
    assert no_thread_left()
    assert events == [("started in", THREAD), ("closed in", THREAD)]


def test_prefetch_is_checked():
    with pytest.raises(ConfigError, match="prefetch must be -1"):
        make_config("tiny", prefetch=-2)


@pytest.mark.slow
def test_a_run_making_batches_ahead_trains_and_resumes_as_one_making_them_in_line(cifar10_root, tmp_path, monkeypatch):
    """The device path, 2 epochs of 4 steps: made in line, against made 2 ahead with a crash in step 7 (the thread
    had made the batches of steps 8 and 9 by then) and a resume from the checkpoint of step 6."""
    pretrain(tiny(cifar10_root, tmp_path / "a", epochs=2, data_path="device", prefetch=0), progress=False)
    ahead = dict(epochs=2, data_path="device", prefetch=2, checkpoint_every_steps=3)
    monkeypatch.setattr(mocolab.train.Trainer, "step", crashing_in_step(7))
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(cifar10_root, tmp_path / "b", **ahead), progress=False)
    monkeypatch.undo()
    assert no_thread_left()
    assert load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["position"]["step"] == 2  # step 6 = 2 of epoch 2
    pretrain(tiny(cifar10_root, tmp_path / "b", resume=True, **ahead), progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")
