"""Linear probes on a frozen backbone: real CIFAR-10 runs, the frozen check, schedules."""

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mocolab import augment
from mocolab.data import load_split, seeded_subset
from mocolab.evaluate.baselines import baseline_encoder, calibrate_bn
from mocolab.evaluate.linear import (
    PROBES,
    Lighting,
    MultiHead,
    ProbeRecipe,
    linear_probe,
    probe_recipe,
    probe_transforms,
    scaled_milestones,
    verify_unchanged,
)
from mocolab.models import stage_outputs


def cifar_sets(root, n_train=256, n_test=200):
    train_t, test_t = probe_transforms("cifar", 32, *augment.normalisation("cifar"))
    return (
        seeded_subset(load_split("imagefolder", root, "train", train_t), n_train, 3),
        seeded_subset(load_split("imagefolder", root, "test", test_t), n_test, 3),
    )


def test_milestones_scale_with_epochs():
    assert scaled_milestones(100, 100, (60, 80)) == [60, 80]
    assert scaled_milestones(10, 100, (60, 80)) == [6, 8]
    assert scaled_milestones(9, 90, (30, 60)) == [3, 6]
    assert scaled_milestones(28, 28, (7, 14, 21)) == [7, 14, 21]


@pytest.mark.slow
def test_avgpool_probe_on_real_cifar10_keeps_backbone_frozen(cifar10_root):
    encoder, _ = baseline_encoder("random", "resnet18", cifar_stem=True)
    train_set, test_set = cifar_sets(cifar10_root)
    calibrate_bn(encoder, DataLoader(train_set, batch_size=64), batches=4)
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    recipe = dataclasses.replace(probe_recipe("avgpool", epochs=6, lr=0.02), batch_size=64)
    result = linear_probe(encoder.backbone, train_set, test_set, 10, "avgpool", recipe, workers=0, progress=False)
    assert result["recipe"]["milestones"] == (4, 5) and [h["lr"] for h in result["history"]] == pytest.approx(
        [0.02] * 4 + [0.002, 0.0002]
    )
    assert all(torch.equal(v, before[k]) for k, v in encoder.backbone.state_dict().items())
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    assert 15 < result["top1"]["avgpool"] <= 100 and result["top5"]["avgpool"] >= result["top1"]["avgpool"]


@pytest.mark.slow
def test_multihead_probe_trains_five_heads(cifar10_root):
    encoder, _ = baseline_encoder("random", "resnet18", cifar_stem=True)
    train_set, test_set = cifar_sets(cifar10_root, 128, 100)
    recipe = dataclasses.replace(probe_recipe("multihead", epochs=2), batch_size=64)
    result = linear_probe(encoder.backbone, train_set, test_set, 10, "multihead", recipe, workers=0, progress=False)
    assert set(result["top1"]) == {"feat1", "feat2", "feat3", "feat4", "feat5"}
    assert result["recipe"] == {
        "epochs": 2,
        "lr": 0.01,
        "weight_decay": 1e-4,
        "nesterov": True,
        "milestones": (1,),
        "momentum": 0.9,
        "batch_size": 64,
    }


def test_probe_recipes_are_the_protocols():
    assert PROBES["avgpool"] == ProbeRecipe(epochs=100, lr=30.0, weight_decay=0.0, nesterov=False, milestones=(60, 80))
    assert PROBES["multihead"] == ProbeRecipe(epochs=90, lr=0.01, weight_decay=1e-4, nesterov=True, milestones=(30, 60))
    assert PROBES["places"].epochs == 28 and PROBES["places"].milestones == (7, 14, 21)
    assert probe_recipe("avgpool", epochs=10).milestones == (6, 8) and probe_recipe("avgpool").lr == 30.0


def test_multihead_uses_non_affine_bn_and_protocol_dims():
    backbone = baseline_encoder("random", "resnet50")[0].backbone.eval()
    with torch.no_grad():
        maps = stage_outputs(backbone, torch.randn(1, 3, 224, 224))
    head = MultiHead({k: (v.shape[1], v.shape[-1]) for k, v in maps.items()}, 1000)
    assert [head.fcs[n].in_features for n in head.fcs] == [9216, 9216, 8192, 9216, 8192]
    assert all(not bn.affine and bn.momentum == 0.1 for bn in head.bns.values())


def test_frozen_check_fails_if_a_backbone_tensor_changes():
    backbone = baseline_encoder("random", "resnet18", cifar_stem=True)[0].backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    verify_unchanged(backbone, before)
    backbone.layer2[0].bn1.running_mean += 1e-3  # a BN buffer, as train-mode BN would change it
    with pytest.raises(RuntimeError, match="frozen backbone changed.*layer2.0.bn1.running_mean"):
        verify_unchanged(backbone, before)


def test_lighting_noise_shifts_channels_by_pca_directions():
    torch.manual_seed(0)
    image = torch.full((3, 4, 4), 0.5)
    out = Lighting(0.1)(image)
    shift = (out - image)[:, 0, 0]
    assert torch.allclose(out - image, shift.view(3, 1, 1).expand(3, 4, 4))
    assert 0 < shift.abs().max() < 0.2


def test_sets_smaller_than_a_batch_are_warned_about(cifar10_root):
    """40 test images in batches of 64, then 65 training images in batches of 256: one warning each (a last
    training batch of one image is fine: the heads' BatchNorm2d normalises over its pooled pixels too)."""
    encoder, _ = baseline_encoder("random", "resnet18", cifar_stem=True)
    train_set, test_set = cifar_sets(cifar10_root, 65, 40)
    recipe = dataclasses.replace(probe_recipe("multihead", epochs=1), batch_size=64)
    with pytest.warns(
        UserWarning,
        match=r"test set holds 40 images, fewer than one batch of 64: its accuracy "
        r"moves in steps of 2\.5 points",
    ):
        result = linear_probe(encoder.backbone, train_set, test_set, 10, "multihead", recipe, workers=0, progress=False)
    assert len(result["top1"]) == 5
    with pytest.warns(
        UserWarning,
        match=r"training set holds 65 images, fewer than one batch of 256: each of its 1 "
        r"epochs is a single step",
    ):
        linear_probe(
            encoder.backbone,
            train_set,
            test_set,
            10,
            "multihead",
            dataclasses.replace(recipe, batch_size=256),
            workers=0,
            progress=False,
        )


def test_places_training_crops_come_from_the_central_square():
    """The reference's Places205 pipeline centre-crops the resized image to 256 x 256 before its random 224
    crop: on a wide image no crop reaches the outer bands (without the centre crop most draws would)."""
    from PIL import Image

    from mocolab.evaluate.linear import probe_transforms

    wide = np.zeros((256, 768, 3), dtype=np.uint8)
    wide[:, 256:512, 1] = 255  # green centre square, black bands left and right
    train, _ = probe_transforms("places", mean=(0, 0, 0), std=(1, 1, 1))
    torch.manual_seed(0)
    for _ in range(20):
        crop = train(Image.fromarray(wide))
        assert crop.shape == (3, 224, 224) and bool((crop[1] > 0.99).all())
