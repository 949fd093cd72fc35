"""The augmentation recipes hold exactly the operations and parameters of PROTOCOLS.md."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mocolab import augment


def ops(compose):
    """The flat list of (operation, probability) in a Compose, unwrapping RandomApply."""
    out = []
    for t in compose.transforms:
        if isinstance(t, v2.RandomApply):
            out += [(inner, t.p) for inner in t.transforms]
        else:
            out.append((t, getattr(t, "p", 1.0)))
    return out


def test_aug_plus_recipe():
    steps = ops(augment.aug_plus(224))
    kinds = [type(t).__name__ for t, _ in steps]
    assert kinds[:5] == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "GaussianBlur", "RandomHorizontalFlip"]
    crop, (jitter, p_jitter), (_, p_gray), (blur, p_blur), (_, p_flip) = steps[0][0], *steps[1:5]
    assert crop.size == (224, 224) and crop.scale == (0.2, 1.0)
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
        (0.6, 1.4),
        (0.6, 1.4),
        (0.6, 1.4),
        (-0.1, 0.1),
    ) and p_jitter == 0.8
    assert p_gray == 0.2 and p_flip == 0.5
    assert blur.sigma == [0.1, 2.0] and p_blur == 0.5 and blur.kernel_size == (23, 23)
    normalize = steps[-1][0]
    assert normalize.mean == list(augment.IMAGENET_MEAN) and normalize.std == list(augment.IMAGENET_STD)


def test_v1_recipe_has_strong_jitter_always_and_no_blur():
    steps = ops(augment.aug_v1(224))
    kinds = [type(t).__name__ for t, _ in steps]
    assert "GaussianBlur" not in kinds
    jitter, p = next((t, p) for t, p in steps if isinstance(t, v2.ColorJitter))
    assert p == 1.0 and jitter.hue == (-0.4, 0.4)
    assert steps[0][0].scale == (0.2, 1.0)


def test_cifar_demo_recipe():
    steps = ops(augment.cifar_demo(32))
    kinds = [type(t).__name__ for t, _ in steps]
    assert kinds[:4] == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale"]
    assert "GaussianBlur" not in kinds
    assert steps[0][0].size == (32, 32) and steps[0][0].scale == (0.08, 1.0)
    assert steps[2][1] == 0.8 and steps[2][0].hue == (-0.1, 0.1) and steps[3][1] == 0.2
    assert steps[-1][0].mean == [0.4914, 0.4822, 0.4465] and steps[-1][0].std == [0.2023, 0.1994, 0.2010]


def test_two_views_are_independent_normalised_tensors():
    image = Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy())
    a, b = augment.TwoViews(augment.pretrain_transform("aug_plus", 32))(image)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)


def test_eval_transform_is_deterministic_and_centre_crops_large_images():
    image = Image.fromarray(torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8).numpy())
    t = augment.eval_transform(224)
    assert torch.equal(t(image), t(image)) and t(image).shape == (3, 224, 224)
    assert [type(s).__name__ for s in t.transforms][:2] == ["Resize", "CenterCrop"]
    assert t.transforms[0].size == [256]
    small = Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy())
    mean, std = augment.normalisation("cifar")
    x = augment.eval_transform(32, mean, std)(small)
    plain = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])(small)
    assert torch.equal(x, plain)  # CIFAR-size data: the plain image


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown augmentation 'simclr'"):
        augment.pretrain_transform("simclr", 32)
