"""The three data paths behind one interface: the reference path's images and order on every path,
a uint8 cache that cannot go stale, exact resumes, kNN sets equal to the reference's."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from mocolab import make_config, pretrain
from mocolab.augment import batched, recipe
from mocolab.check.operations import Operations
from mocolab.data import DatasetError, knn_datasets, knn_sets, pretrain_batches
from mocolab.data import jpeg as jpeg_data
from mocolab.data.device import batches as device_batches
from mocolab.data.device import cached_split, one_read_per_split
from mocolab.data.device import knn_sets as device_knn_sets
from mocolab.train import knn_monitor


def cfg_for(root, tmp_path, **overrides):
    values = dict(
        dataset="imagefolder",
        data_root=str(root),
        gpus=0,
        batch_size=16,
        K=64,
        bn_splits=2,
        train_subset=64,
        workers=0,
        epochs=1,
        knn_every=0,
        output_dir=str(tmp_path / "run"),
    )
    return make_config("cifar10_demo", **{**values, **overrides})


def test_folder_is_decoded_once_into_a_cache_keyed_by_its_files(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3, size=8)
    images, labels = cached_split("imagefolder", root, "train", cache_dir=tmp_path / "cache")
    assert images.shape == (6, 3, 8, 8) and images.dtype == torch.uint8 and labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = root / "train" / "cat" / "000.jpg"
    assert torch.equal(images[0], torch.from_numpy(np.asarray(Image.open(first).convert("RGB"))).permute(2, 0, 1))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "dog" / "new.jpg")
    images, _ = cached_split("imagefolder", root, "train", cache_dir=tmp_path / "cache")
    assert len(images) == 7  # a new file is a new key, not a stale cache
    (root / "train" / "cat").rename(root / "train" / "tmp")  # swap the classes' images in place: same count,
    (root / "train" / "dog").rename(root / "train" / "cat")  # same file names in both folders
    (root / "train" / "tmp").rename(root / "train" / "dog")
    swapped, labels = cached_split("imagefolder", root, "train", cache_dir=tmp_path / "cache")
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1] and torch.equal(swapped[:4], images[3:])  # decoded anew


def test_a_run_fingerprints_each_split_once_and_the_next_run_looks_again(tmp_path, monkeypatch):
    from mocolab.data import device

    root = write_image_folder(tmp_path / "d", per_class=8, size=16, splits=("train", "test"))
    read = []
    real_digest = device.files_digest
    monkeypatch.setattr(device, "files_digest", lambda ds: read.append(ds.root) or real_digest(ds))
    cfg = cfg_for(root, tmp_path, image_size=16, knn_every=1, batch_size=8, K=16, train_subset=0)
    with one_read_per_split():
        batches = device_batches(cfg, "cpu")
        bank, test, classes = device_knn_sets(cfg, "cpu")
    assert sorted(Path(r).name for r in read) == ["test", "train"]  # the train split once, not twice
    assert len(bank.images) == len(batches) == 16 and len(test.images) == 16 and classes == 2
    (root / "train" / "cat" / "000.jpg").unlink()  # changed between two runs: the next one sees it
    with one_read_per_split():
        assert len(device_batches(cfg, "cpu")) == 15


def test_images_of_different_sizes_are_refused_naming_the_file(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2, size=8)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(root / "train" / "dog" / "tall.jpg")
    with pytest.raises(DatasetError, match=r"tall\.jpg is 8x9 px.*data_path='cpu'"):
        cached_split("imagefolder", root, "train", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("path", ["cpu", "device", "jpeg"])
def test_every_path_gives_the_reference_paths_images_in_its_order_on_the_device(cifar10_root, tmp_path, path):
    cfg = cfg_for(cifar10_root, tmp_path, seed=3, data_path=path)
    reference = [
        y.tolist()
        for _, y in pretrain_batches(
            cfg_for(cifar10_root, tmp_path, seed=3, data_path="cpu"), torch.device("cpu")
        ).epoch(1)
    ]
    batches = pretrain_batches(cfg, torch.device("cpu"))
    assert batches.path == path and len(batches) == 64
    ours = list(batches.epoch(1))
    assert [y.tolist() for _, y in ours] == reference  # the same subset, the same permutation
    (x_q, x_k), y = ours[0]
    assert x_q.shape == x_k.shape == (16, 3, 32, 32) and x_q.dtype == torch.float32 and not torch.equal(x_q, x_k)
    assert x_q.device.type == y.device.type == "cpu"
    again = next(iter(batches.epoch(1)))[0][0]
    assert torch.equal(again, x_q)  # the draws are a function of (seed, epoch, position): resumes are exact
    assert not torch.equal(next(iter(batches.epoch(2)))[0][0], x_q)


def test_two_processes_share_each_global_batch_as_the_reference_does(cifar10_root, tmp_path):
    cfg = cfg_for(cifar10_root, tmp_path)
    one = [y for _, y in device_batches(cfg, "cpu").epoch(0)]
    halves = [[y for _, y in device_batches(cfg, "cpu", rank=r, world=2).epoch(0)] for r in (0, 1)]
    for step, y in enumerate(one):
        assert sorted(y.tolist()) == sorted(halves[0][step].tolist() + halves[1][step].tolist())


def test_knn_sets_on_the_device_match_the_reference_subsets(cifar10_root, tmp_path):
    cfg = cfg_for(cifar10_root, tmp_path, knn_bank_size=50, knn_test_size=20, data_path="device")
    bank, test, classes = knn_sets(cfg, torch.device("cpu"))
    ref_bank, ref_test = knn_datasets(cfg)
    assert classes == 10 and len(bank.images) == 50 and len(test.images) == 20
    x, y = next(iter(test))
    ref = torch.stack([ref_test[i][0] for i in range(20)])
    assert torch.allclose(x, ref, atol=1e-5) and y.tolist() == [ref_test[i][1] for i in range(20)]
    assert device_knn_sets(cfg_for(cifar10_root, tmp_path, image_size=16), "cpu") is None  # would need resizing
    loaders = knn_sets(dataclasses.replace(cfg, image_size=16), torch.device("cpu"))
    assert len(loaders.bank.dataset) == 50  # the loader path stands in


@pytest.mark.slow
def test_pretraining_on_the_device_path_monitors_the_reference_knn(cifar10_root, tmp_path):
    """The kNN monitor on the device path (bank and test set held on the device) gives the value the
    reference loaders give for the same encoder. In the default NCHW layout: with channels_last the two
    paths' inputs take different oneDNN kernels in PyPI's torch 2.14.1 build, whose rounding flipped a
    near-tie among the 32 test images (12.5 against 15.625); the layout is not what is tested here."""
    cfg = cfg_for(
        cifar10_root,
        tmp_path,
        data_path="device",
        knn_every=1,
        knn_bank_size=64,
        knn_test_size=32,
        knn_k=10,
        epochs=2,
        channels_last=False,
    )
    run = pretrain(cfg, progress=False)
    assert [r["epoch"] for r in run.history] == [0, 1, 2] and run.steps[-1]["random_keys"] == 0  # 8 x 16 keys
    reference = knn_monitor(
        run.model.encoder_q,
        knn_sets(dataclasses.replace(cfg, data_path="cpu"), torch.device("cpu")),
        cfg,
        "cpu",
        progress=False,
    )
    assert run.history[-1]["knn_top1"] == pytest.approx(reference, abs=1e-9)


# ----------------------------------------------------------------------------
# Image folders: bytes from the workers, decoding and augmentation on the device
# ----------------------------------------------------------------------------


def test_jpeg_views_equal_torchvisions_ops_on_the_decoded_images(tmp_path, monkeypatch):
    import torchvision.transforms.v2.functional as TF

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(120, 90), (64, 200), (75, 75)]):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "3.png")
    paths.append(tmp_path / "3.png")  # not a JPEG: decoded on the CPU, then joined to the batch
    data = [jpeg_data.FileBytes([(str(p), 0)])[0][0] for p in paths]
    images = jpeg_data.decode(data, "cpu")
    assert [tuple(im.shape) for im in images] == [(3, 120, 90), (3, 64, 200), (3, 75, 75), (3, 50, 40)]
    assert torch.equal(images[3], torch.from_numpy(np.array(Image.open(paths[3]))).permute(2, 0, 1))
    r = recipe("aug_plus", 48)
    p = batched.sample_params(
        r, 4, torch.tensor([120, 64, 75, 50]), torch.tensor([90, 200, 75, 40]), torch.Generator().manual_seed(0)
    )
    crops = jpeg_data.resized_crop_list(images, p["box"], 48)
    monkeypatch.setattr(jpeg_data, "BATCHED_WEIGHTS", not (jpeg_data.BATCHED_WEIGHTS or False))
    assert torch.equal(jpeg_data.resized_crop_list(images, p["box"], 48), crops)  # batched weights or per crop
    for i, image in enumerate(images):
        top, left, h, w = p["box"][i].tolist()
        ref = TF.resized_crop(image.float() / 255, top, left, h, w, [48, 48], antialias=True)
        assert torch.allclose(crops[i], ref, atol=2e-5)


def test_jpeg_views_copy_nothing_from_the_host_per_image_and_run_few_operations_per_image(monkeypatch):
    """The CPU's proxy for the jpeg path's GPU cost (issue 26, item 4): tensors built from host data (aten.lift_fresh;
    on a GPU a copy that makes the stream wait) and operations per image, counted as the difference between a
    batch of 8 images and one of 4. Before, each image cost 2 host copies (its crop's height and width, for its
    resize weights) and 102 operations; the weights now come from one batched call, read off the boxes on the
    device, leaving the crop's conversion and its two products. The views stay the same (test above)."""
    monkeypatch.setattr(batched, "USE_TORCH_WHERE", True)  # as on a GPU: no per-image selection
    monkeypatch.setattr(jpeg_data, "BATCHED_WEIGHTS", True)  # as on a GPU: the crops' weights in one call
    generator = torch.Generator().manual_seed(0)
    r = recipe("aug_plus", 32)
    counts = {}
    for n in (4, 8):
        images = [torch.randint(0, 256, (3, 60 + 7 * i, 80 - 5 * i), dtype=torch.uint8) for i in range(n)]
        sides = jpeg_data.image_sides(images)
        jpeg_data.views(images, r, generator, sides)  # the per-channel constants reach the device once
        with Operations() as count:
            jpeg_data.views(images, r, generator, sides)
        counts[n] = count
    assert counts[4].from_host == counts[8].from_host == 0
    per_image = (counts[8].total - counts[4].total) / 4
    assert per_image <= 25, per_image  # 18 with torch 2.14.1
    # Computing per image: the crop to float in [0, 1] (one division of the uint8 crop, where .float() / 255 was
    # two), its two products (bmm, mm) and their two _unsafe_views.
    assert (counts[8].computing - counts[4].computing) / 4 <= 5
    monkeypatch.setattr(jpeg_data, "BATCHED_WEIGHTS", False)  # the CPU's way: weights crop by crop, still no copy
    with Operations() as count:
        jpeg_data.views(images, r, generator, sides)
    assert count.from_host == 0


def test_jpeg_views_read_nothing_back_from_the_device(monkeypatch):
    """On a GPU, reading a device tensor on the host (.tolist(), .item()) waits for every kernel queued before the
    read, the previous training step's included. Here the views are made of images on the meta device, where any
    such read raises: the crop boxes are drawn on the host, where the crops are cut. Before, they were drawn on
    the device and read back (box.tolist()), once per view batch."""
    monkeypatch.setattr(batched, "USE_TORCH_WHERE", True)  # as on a GPU
    monkeypatch.setattr(jpeg_data, "BATCHED_WEIGHTS", True)
    images = [torch.empty(3, 60 + 7 * i, 80 - 5 * i, dtype=torch.uint8, device="meta") for i in range(4)]
    for name in ("aug_plus", "v1"):
        views = jpeg_data.views(images, recipe(name, 32), torch.Generator().manual_seed(0))
        assert views.shape == (4, 3, 32, 32) and views.device.type == "meta"


def folder_cfg(root, **overrides):
    """The ImageNet recipe shrunk for an image folder of 40 px images on the CPU: 32 px views, batch 8, K 32."""
    values = dict(dataset="imagefolder", data_root=str(root), gpus=0, image_size=32, batch_size=8, K=32)
    return make_config("imagenet_mocov2", **{**values, **overrides})


@pytest.mark.slow
def test_pretraining_from_an_image_folder_on_the_jpeg_path(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=16, size=40)
    cfg = folder_cfg(
        root,
        data_path="jpeg",
        arch="resnet18",
        head="linear",
        bn_splits=2,
        epochs=1,
        workers=1,
        knn_every=1,
        knn_bank_size=16,
        knn_test_size=8,
        output_dir=str(tmp_path / "run"),
    )
    run = pretrain(cfg, progress=False)
    assert len(run.steps) and run.history[0]["knn_top1"] is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_path"] == "jpeg"
    labels = [y.tolist() for _, y in pretrain_batches(cfg, torch.device("cpu")).epoch(0)]
    reference = [
        y.tolist() for _, y in pretrain_batches(dataclasses.replace(cfg, data_path="cpu"), torch.device("cpu")).epoch(0)
    ]
    assert labels == reference  # the reference path's order


@pytest.mark.slow
def test_compiled_encoders_keep_the_checkpoint_keys_of_the_plain_model(cifar10_root, tmp_path, monkeypatch):
    """compile=True compiles both encoders in place; a checkpoint still loads into an uncompiled model.
    (torch.compile's eager backend stands in for inductor, whose C++ build takes minutes on this CPU.)"""
    compile_eagerly = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_eagerly(self, backend="eager"))
    cfg = cfg_for(cifar10_root, tmp_path, data_path="device", compile=True, train_subset=32)
    run = pretrain(cfg, progress=False)
    assert run.model.encoder_q._compiled_call_impl is not None  # it did run compiled
    from mocolab import load_run

    again = load_run(tmp_path / "run")  # an uncompiled model: the keys must match exactly
    assert torch.equal(again.model.queue.keys, run.model.queue.keys.cpu())


@pytest.mark.slow
@pytest.mark.parametrize("path", ["device", "jpeg"])
def test_the_compiled_augmentation_gives_each_path_its_eager_batches(path, tmp_path, monkeypatch):
    """compile=True on a GPU's device and jpeg paths: each batch's choices and views through batched.compiled,
    from the same seeded draws as the eager batches. Forced here on the CPU, with torch.compile's eager backend
    (the traced graph; inductor's numerics are tests/test_batched_augment.py's)."""
    compiled, asked = batched.compiled, []
    monkeypatch.setattr(
        batched, "compiled", lambda fn, r, backend="inductor": asked.append(fn) or compiled(fn, r, "eager")
    )
    cfg = folder_cfg(write_image_folder(tmp_path / "data", per_class=8, size=40), data_path=path, workers=0)
    eager = pretrain_batches(cfg, torch.device("cpu"))
    fused = pretrain_batches(cfg, torch.device("cpu"))
    assert not eager.compiled  # compile=False: eager everywhere
    fused.compiled = True  # what compile=True sets on a GPU
    pairs = list(zip(eager.epoch(0), fused.epoch(0)))
    assert len(pairs) == 2
    for ((a_q, a_k), a_y), ((b_q, b_k), b_y) in pairs:
        assert torch.equal(a_y, b_y)
        assert torch.allclose(a_q, b_q, atol=1e-4) and torch.allclose(a_k, b_k, atol=1e-4)
        assert not torch.allclose(a_q, a_k, atol=1e-2)  # two different views of each image
    if path == "device":
        assert set(asked) == {batched.params, batched.apply_params} and len(asked) == 2 * 2 * 2  # batches x views x 2
    else:  # the jpeg path's choices are made on the host (jpeg_data.views), eager
        assert set(asked) == {batched.finish_views} and len(asked) == 2 * 2


def messy_folder(root):
    """40 good 32 px JPEGs in two classes, and in the train split a truncated JPEG, an empty .jpg and a text
    file named .png: the bad files a hand-gathered folder holds."""
    write_image_folder(root, per_class=20, size=32, splits=("train", "test"))
    good = (root / "train" / "cat" / "000.jpg").read_bytes()
    bad = {
        root / "train" / "cat" / "truncated.jpg": good[: len(good) // 2],
        root / "train" / "dog" / "empty.jpg": b"",
        root / "train" / "dog" / "notes.png": b"these are my notes, not a picture",
    }
    for path, data in bad.items():
        path.write_bytes(data)
    return root, sorted(str(p) for p in bad)


@pytest.mark.parametrize("path", ["cpu", "device", "jpeg", "jpeg, made ahead"])
def test_every_data_path_skips_and_reports_each_unreadable_file_once(path, tmp_path, monkeypatch):
    from mocolab.run import unreadable

    monkeypatch.setattr(unreadable, "_reported", set())
    monkeypatch.setattr(unreadable, "MAX_UNREADABLE", 0.1)  # 3 of 43 files
    root, bad = messy_folder(tmp_path / "data")
    path, _, ahead = path.partition(", ")  # made ahead: reported from the thread that makes the batches
    cfg = cfg_for(root, tmp_path, data_path=path, train_subset=0, batch_size=8, K=32, prefetch=2 if ahead else 0)
    monkeypatch.setenv("MOCOLAB_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning) as caught:
        batches = pretrain_batches(cfg, torch.device("cpu"))
        for epoch in range(2):  # two epochs: still one report per file
            for (x_q, x_k), y in batches.epoch(epoch):
                assert x_q.shape == (8, 3, 32, 32) and torch.isfinite(x_q).all()
    reports = [str(w.message) for w in caught if "skipping unreadable image" in str(w.message)]
    named = sorted(m.split("skipping unreadable image ")[1].split(":")[0] for m in reports)
    assert named == bad  # each bad file, once, over two epochs


def test_a_folder_with_too_many_unreadable_files_is_refused_naming_them(tmp_path, monkeypatch):
    from mocolab.run import unreadable

    monkeypatch.setattr(unreadable, "_reported", set())
    root, bad = messy_folder(tmp_path / "data")  # 3 of 43: more than the default 1%
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            DatasetError,
            match=r"3 of 43 images in .*train cannot be read "
            r"\(more than 1%\), e\.g\. .*is data_root",
        ),
    ):
        cached_split("imagefolder", root, "train", cache_dir=tmp_path / "cache")
