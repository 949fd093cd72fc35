"""Evaluation inputs: VOCdevkit reading, layer pooling, encoders from checkpoints, the feature cache."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mocolab import augment, build_encoder, make_config
from mocolab.run.checkpoint import CheckpointError, atomic_save
from mocolab.data import DatasetError, load_split, seeded_subset
from mocolab import weights
from mocolab.evaluate.baselines import baseline_encoder
from mocolab.evaluate.feature_cache import cached_features
from mocolab.evaluate.features import extract_layers
from mocolab.evaluate.layers import layer_features, layer_pool
from mocolab.evaluate.voc import VOC_CLASSES, VOC07Classification, voc_svm_transform
from mocolab.train import build_model


def write_voc(root, ids=("000005", "000007", "000009"), split="trainval", values=None):
    """A VOCdevkit tree: JPEGs and ImageSets/Main files; values[class][i] in {1, -1, 0}."""
    main, jpegs = root / "VOC2007" / "ImageSets" / "Main", root / "VOC2007" / "JPEGImages"
    main.mkdir(parents=True, exist_ok=True)
    jpegs.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(np.full((40, 60, 3), 128, dtype=np.uint8)).save(jpegs / f"{i}.jpg")
    (main / f"{split}.txt").write_text("\n".join(ids) + "\n")
    for c, name in enumerate(VOC_CLASSES):
        column = (values or {}).get(name, [-1] * len(ids))
        (main / f"{name}_{split}.txt").write_text("".join(f"{i} {v:2d}\n" for i, v in zip(ids, column)))
    return root


def test_voc_targets_are_1_present_0_absent_minus1_difficult(tmp_path):
    write_voc(tmp_path, values={"cat": [1, 0, -1], "dog": [-1, 1, 1]})
    ds = VOC07Classification(tmp_path / "VOC2007", "trainval", voc_svm_transform())
    cat, dog = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")
    assert ds.targets[:, cat].tolist() == [1, -1, 0] and ds.targets[:, dog].tolist() == [0, 1, 1]
    assert ds.targets[:, 0].tolist() == [0, 0, 0]
    image, target = ds[0]
    assert image.shape == (3, 224, 224) and target.shape == (20,)  # squashed, not cropped


def test_voc_bad_layouts_are_named(tmp_path):
    with pytest.raises(DatasetError, match="no .*trainval.txt: expected a VOCdevkit tree"):
        VOC07Classification(tmp_path)
    write_voc(tmp_path)
    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    (main / "cat_trainval.txt").write_text("000005  1\n000007 -1\n")
    with pytest.raises(DatasetError, match="cat_trainval.txt has no line for 1 image.*000009"):
        VOC07Classification(tmp_path)
    (main / "cat_trainval.txt").write_text("000005  1\n000007 -1\n000009 -1\n000010 1\n")
    with pytest.raises(DatasetError, match="names image 000010, which .*trainval.txt does not list"):
        VOC07Classification(tmp_path)
    write_voc(tmp_path)
    (tmp_path / "VOC2007" / "JPEGImages" / "000007.jpg").unlink()
    with pytest.raises(DatasetError, match="1 image.* not in .*JPEGImages.*000007.jpg"):
        VOC07Classification(tmp_path)
    (main / "test.txt").write_text("")
    with pytest.raises(DatasetError, match="the test split is empty"):
        VOC07Classification(tmp_path, "test")


def test_layer_features_of_resnet50_have_the_protocols_grids_and_dims():
    """ResNet-50 at 224: feat1..feat5 come out as 12x12, 6x6, 4x4, 3x3, 2x2 grids of 9216, 9216, 8192,
    9216 and 8192 dims (the protocol's table), and padding counts toward the average."""
    backbone = baseline_encoder("random", "resnet50")[0].backbone.eval()
    feats = layer_features(backbone, torch.randn(1, 3, 224, 224), ("feat1", "feat2", "feat3", "feat4", "feat5"))
    assert {k: v.shape[1] for k, v in feats.items()} == {
        "feat1": 9216,
        "feat2": 9216,
        "feat3": 8192,
        "feat4": 9216,
        "feat5": 8192,
    }
    grids = {
        c: layer_pool(c, s)(torch.zeros(1, c, s, s)).shape[-1]
        for c, s in ((64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7))
    }
    assert grids == {64: 12, 256: 6, 512: 4, 1024: 3, 2048: 2}
    corner = layer_pool(64, 112)(torch.ones(1, 1, 112, 112))[0, 0, 0, 0]
    assert corner.item() == pytest.approx(36 / 100)  # a 10 x 10 window, 4 rows and columns of it padding


def test_the_head_read_with_other_layers_comes_from_the_same_backbone_pass():
    """The kNN monitor with the online probe reads the head and avgpool of its test images: one backbone pass per
    batch (two before), and the head's features the same as read alone (encoder(x) = head(backbone(x)))."""
    encoder = build_encoder("resnet10_w16", cifar_stem=True, head="mlp", dim=16).eval()
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    loader = [(images[:8], torch.zeros(8)), (images[8:], torch.ones(4))]
    passes = []
    encoder.backbone.conv1.register_forward_hook(lambda *_: passes.append(1))
    both, _ = extract_layers(encoder, loader, ("head", "avgpool"), progress=False)
    assert len(passes) == len(loader)
    alone, _ = extract_layers(encoder, loader, ("head",), progress=False)
    assert torch.equal(both["head"], alone["head"]) and both.keys() == {"head", "avgpool"}
    with_feat5, _ = extract_layers(encoder, loader, ("feat5", "head"), progress=False)  # avgpool not kept
    assert with_feat5.keys() == {"feat5", "head"} and torch.equal(with_feat5["head"], alone["head"])


def test_layer_pools_of_other_backbones_bring_each_stage_near_9216_dims():
    backbone = baseline_encoder("random", "resnet18", cifar_stem=True)[0].backbone
    feats = layer_features(
        backbone, torch.randn(2, 3, 32, 32), ("feat1", "feat2", "feat3", "feat4", "feat5", "avgpool")
    )
    assert {k: v.shape[1] for k, v in feats.items()} == {
        "feat1": 9216,
        "feat2": 9216,
        "feat3": 8192,
        "feat4": 9216,
        "feat5": 8192,
        "avgpool": 512,
    }


def test_encoder_from_checkpoint_and_mismatch(tmp_path):
    cfg = make_config("cifar10_demo", dim=16, K=512)
    model = build_model(cfg)
    atomic_save({"kind": "pretraining", "model": model.state_dict(), "config": cfg.to_dict()}, tmp_path / "c.pt")
    loaded = weights.load(tmp_path / "c.pt")
    assert torch.equal(loaded.encoder.head.weight, model.encoder_q.head.weight)
    assert loaded.identity.startswith("moco-") and loaded.format == "mocolab" and loaded.arch == "resnet18"
    state = model.state_dict()
    state["encoder_q.backbone.fc_extra"] = torch.zeros(1)
    atomic_save({"kind": "pretraining", "model": state, "config": cfg.to_dict()}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="missing none; unexpected fc_extra"):
        weights.load(tmp_path / "extra.pt")
    state = model.state_dict()
    del state["encoder_q.head.bias"]
    atomic_save({"kind": "pretraining", "model": state, "config": cfg.to_dict()}, tmp_path / "no_bias.pt")
    with pytest.raises(CheckpointError, match="missing bias; unexpected none"):
        weights.load(tmp_path / "no_bias.pt")


def test_feature_cache_reuses_only_identical_inputs(cifar10_root, tmp_path, monkeypatch):
    encoder, identity = baseline_encoder("random", "resnet18", cifar_stem=True)
    transform = augment.eval_transform(32, *augment.normalisation("cifar"))
    ds = seeded_subset(load_split("imagefolder", cifar10_root, "test", transform), 20, 0)
    first, labels = cached_features(
        encoder, identity, ds, "cifar10:test", ("avgpool",), tmp_path, workers=0, progress=False
    )
    direct, _ = extract_layers(encoder, DataLoader(ds, batch_size=8), ("avgpool",), progress=False)
    assert torch.allclose(first["avgpool"], direct["avgpool"], atol=1e-5) and len(labels) == 20
    calls = []
    monkeypatch.setattr(
        "mocolab.evaluate.features.extract_layers", lambda *a, **k: calls.append(a[2]) or extract_layers(*a, **k)
    )
    again, _ = cached_features(encoder, identity, ds, "cifar10:test", ("avgpool",), tmp_path, workers=0, progress=False)
    assert calls == [] and torch.equal(again["avgpool"], first["avgpool"])
    other = seeded_subset(load_split("imagefolder", cifar10_root, "test", transform), 20, 1)
    cached_features(encoder, identity, other, "cifar10:test", ("avgpool",), tmp_path, workers=0, progress=False)
    cached_features(encoder, "moco-other", ds, "cifar10:test", ("avgpool",), tmp_path, workers=0, progress=False)
    cached_features(encoder, identity, ds, "cifar10:test", ("avgpool", "feat5"), tmp_path, workers=0, progress=False)
    assert calls == [["avgpool"], ["avgpool"], ["feat5"]]  # other subset, other encoder, new layer only


def test_feature_cache_sees_files_changed_in_place(cifar10_root, tmp_path, monkeypatch):
    """Swapping two class folders (same file count) or rewriting a file with its old size and time
    must not return the cached features of the images that were there before."""
    import os
    import shutil

    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / "test" / name).mkdir(parents=True)
        for path in sorted((cifar10_root / "test" / name).iterdir())[:6]:
            shutil.copy2(path, root / "test" / name / path.name)
    encoder, identity = baseline_encoder("random", "resnet18", cifar_stem=True)
    transform = augment.eval_transform(32, *augment.normalisation("cifar"))

    def features():
        ds = load_split("imagefolder", root, "test", transform)
        return cached_features(
            encoder,
            identity,
            ds,
            f"imagefolder:{root}:test",
            ("avgpool",),
            tmp_path / "cache",
            workers=0,
            progress=False,
        )

    first, labels = features()
    (root / "test" / "cat").rename(root / "test" / "tmp")
    (root / "test" / "dog").rename(root / "test" / "cat")
    (root / "test" / "tmp").rename(root / "test" / "dog")
    swapped, swapped_labels = features()
    assert not torch.equal(swapped["avgpool"], first["avgpool"])  # extracted again: the images moved
    assert torch.equal(swapped_labels, labels)  # (same class names in the same order, other images in them)
    target = sorted((root / "test" / "cat").iterdir())[0]
    donor = sorted((root / "test" / "dog").iterdir())[0]
    info = target.stat()
    data = donor.read_bytes()[: info.st_size].ljust(info.st_size, b"\0")
    target.write_bytes(data)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))  # same size, same modification time
    calls = []
    monkeypatch.setattr(
        "mocolab.evaluate.features.extract_layers", lambda *a, **k: calls.append(a[2]) or extract_layers(*a, **k)
    )
    features()
    assert calls == [["avgpool"]]
    features()
    assert calls == [["avgpool"]]  # unchanged files: the cache is used
