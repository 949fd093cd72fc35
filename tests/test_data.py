"""Datasets: real CIFAR-10 as ImageFolder, two views, and every bad input with a clear error."""

import urllib.error

import pytest
import torch
import torchvision

from conftest import write_image_folder
from mocolab import make_config
from mocolab.data import DatasetError, classes_of, knn_datasets, load_split, pretrain_dataset


def test_pretrain_dataset_on_real_cifar10_gives_two_augmented_views(cifar10_root):
    cfg = make_config("cifar10_demo", dataset="imagefolder", data_root=str(cifar10_root), train_subset=100)
    ds = pretrain_dataset(cfg)
    assert len(ds) == 100
    (x_q, x_k), label = ds[0]
    assert x_q.shape == x_k.shape == (3, 32, 32) and not torch.equal(x_q, x_k)
    assert classes_of(ds)[:3] == ["airplane", "automobile", "bird"] and 0 <= label < 10
    # A seeded subset draws from every class (the folder is sorted by class).
    assert len({ds[i][1] for i in range(100)}) == 10


def test_knn_datasets_use_test_split_and_deterministic_transform(cifar10_root):
    cfg = make_config(
        "cifar10_demo", dataset="imagefolder", data_root=str(cifar10_root), knn_bank_size=50, knn_test_size=20
    )
    bank, test = knn_datasets(cfg)
    assert (len(bank), len(test)) == (50, 20)
    assert torch.equal(test[3][0], test[3][0])
    assert "test" in test.dataset.root


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"data_root {tmp_path / 'nope'} does not exist.*train/<class>"):
        load_split("imagefolder", tmp_path / "nope", "train")


def test_missing_split_folder_is_named(tmp_path):
    write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(DatasetError, match="no val/ or test/ folder in"):
        load_split("imagefolder", tmp_path, "test")


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="train holds no images"):
        load_split("imagefolder", tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DatasetError, match="train holds no images"):
        load_split("imagefolder", tmp_path, "train")


def test_corrupt_image_is_reported_by_path_and_skipped(tmp_path):
    write_image_folder(tmp_path, per_class=3)
    bad = tmp_path / "train" / "cat" / "001.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = load_split("imagefolder", tmp_path, "train", transform=torchvision.transforms.v2.PILToTensor())
    with pytest.warns(UserWarning, match=f"skipping unreadable image {bad}"):
        image, label = ds[1]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image, ds[2][0])  # the next readable image stood in
    import warnings

    with warnings.catch_warnings(record=True) as again:  # a whole pass over the folder does not crash,
        warnings.simplefilter("always")  # and does not report the same file again
        batches = list(torch.utils.data.DataLoader(ds, batch_size=2))
    assert sum(len(labels) for _, labels in batches) == 6
    assert not [w for w in again if "skipping unreadable image" in str(w.message)]


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(
        DatasetError,
        match=r"CIFAR-10 is not in .* could not be downloaded.*"
        r"cifar-10-python\.tar\.gz.*cifar-10-batches-py",
    ):
        load_split("cifar10", tmp_path, "train", download=True)
    with pytest.raises(DatasetError, match="was not found \\(download=False\\)"):
        load_split("cifar100", tmp_path, "train", download=False)


def test_every_dataset_name_the_configs_accept_comes_from_the_one_table():
    import typing

    from mocolab.ablation_lab import LabConfig
    from mocolab.config import Config
    from mocolab.data import SPECS
    from mocolab.evaluate.suite import EvalConfig
    from mocolab.ui.notebook import AugmentationsConfig, EmbeddingsConfig

    for cls in (Config, EvalConfig, LabConfig, AugmentationsConfig, EmbeddingsConfig):
        assert typing.get_args(typing.get_type_hints(cls)["dataset"]) == tuple(SPECS), cls
    with pytest.raises(DatasetError, match=r"unknown dataset 'mnist'; choose one of \['cifar10'"):
        load_split("mnist", "data", "train")
    with pytest.raises(DatasetError, match=r"CIFAR-10 has no split 'unlabeled'; its splits are \['train', 'test'\]"):
        load_split("cifar10", "data", "unlabeled")


def test_the_spec_layouts_give_images_as_n_3_h_w_uint8():
    """torchvision keeps CIFAR as N x H x W x 3 with `targets` and STL-10 as N x 3 x H x W with `labels`."""
    from types import SimpleNamespace

    from mocolab.data import SPECS

    images = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    labels = [3, 1, 4, 1, 5]
    cifar = SimpleNamespace(data=images.permute(0, 2, 3, 1).numpy(), targets=labels)
    stl = SimpleNamespace(data=images.numpy(), labels=torch.tensor(labels).numpy().astype("uint8"))
    for name, ds in (("cifar10", cifar), ("cifar100", cifar), ("stl10", stl)):
        got, got_labels = SPECS[name].arrays(ds)
        assert torch.equal(got, images) and got_labels.dtype == torch.long and got_labels.tolist() == labels
    assert SPECS["stl10"].pretrain_split == "unlabeled" and SPECS["imagefolder"].layout == "files"


def test_a_dataset_of_no_known_layout_cannot_be_fingerprinted():
    """A cache keyed by a dataset's name and size alone would return features of other images."""
    from mocolab.data.fingerprint import files_digest

    with pytest.raises(TypeError, match="cannot fingerprint a TensorDataset"):
        files_digest(torch.utils.data.TensorDataset(torch.zeros(3, 2)))
