"""The batched augmentations against the torchvision recipe: same distributions, same pixels for the same draws."""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from scipy import stats

from mocolab import gpu_augment as G
from mocolab.augment import blur_kernel


def torchvision_boxes(n, height, width, scale, ratio, seed=0):
    torch.manual_seed(seed)
    image = torch.zeros(3, height, width)
    return np.array([T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (200, 300, (0.2, 1.0)), (375, 250, (0.2, 1.0))])
def test_crop_boxes_follow_torchvisions_distribution(height, width, scale):
    n, ratio = 4000, (3 / 4, 4 / 3)
    ours = G.sample_crops(n, height, width, scale, ratio, torch.Generator().manual_seed(1)).numpy()
    ref = torchvision_boxes(n, height, width, scale, ratio)
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= width).all() and (ours[:, 2:] > 0).all()
    for name, f in {"area": lambda b: b[:, 2] * b[:, 3] / (height * width),
                    "log aspect": lambda b: np.log(b[:, 3] / b[:, 2]),
                    "top": lambda b: (b[:, 0] + b[:, 2] / 2) / height,
                    "left": lambda b: (b[:, 1] + b[:, 3] / 2) / width}.items():
        assert stats.ks_2samp(f(ours), f(ref)).pvalue > 1e-3, name


def test_crop_falls_back_to_torchvisions_centre_crop_when_nothing_fits():
    # A 10 x 200 strip with scale 1: no box of aspect 3/4..4/3 fits, so the fallback always applies.
    ours = G.sample_crops(50, 10, 200, (1.0, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    ref = torchvision_boxes(1, 10, 200, (1.0, 1.0), (3 / 4, 4 / 3))[0]
    assert (ours.numpy() == ref).all()  # (0, 93, 10, 13)


def test_per_image_sizes_are_supported():
    heights, widths = torch.tensor([32, 300, 120]), torch.tensor([32, 200, 500])
    boxes = G.sample_crops(3, heights, widths, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert ((boxes[:, 0] + boxes[:, 2]) <= heights).all() and ((boxes[:, 1] + boxes[:, 3]) <= widths).all()


def test_jitter_factors_order_and_coins_follow_the_recipe():
    n, r = 24_000, G.recipe("aug_plus", 32)
    p = G.sample_params(r, n, 32, 32, torch.Generator().manual_seed(0))
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        assert stats.kstest(p["factors"][:, k].numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    assert stats.kstest(p["sigma"].numpy(), stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3
    perms = [tuple(o) for o in p["order"].tolist()]
    counts = np.array([perms.count(q) for q in set(perms)])
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3  # every order equally likely
    for key, prob in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)):
        rate = p[key].float().mean().item()
        assert abs(rate - prob) < 4 * math.sqrt(prob * (1 - prob) / n), key


def torchvision_view(image, p, i, r, recipe_name):
    """One view by torchvision's functional ops, in the CPU recipe's order, with draw i of p."""
    top, left, h, w = p["box"][i].tolist()
    x = TF.resized_crop(image, top, left, h, w, [r.size, r.size], antialias=True)
    ops = [lambda v, f: TF.adjust_brightness(v, f), lambda v, f: TF.adjust_contrast(v, f),
           lambda v, f: TF.adjust_saturation(v, f), lambda v, f: TF.adjust_hue(v, f)]
    if recipe_name == "cifar" and p["flip"][i]:  # the CIFAR recipe flips right after the crop
        x = TF.horizontal_flip(x)
    if r.gray_first and p["gray"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p["jitter"][i]:
        for k in p["order"][i].tolist():
            x = ops[k](x, p["factors"][i, k].item())
    if not r.gray_first and p["gray"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if r.blur_p and p["blur"][i]:
        s = p["sigma"][i].item()
        x = TF.gaussian_blur(x, [blur_kernel(r.size)] * 2, [s, s])
    if recipe_name != "cifar" and p["flip"][i]:  # aug+ and v1 flip last
        x = TF.horizontal_flip(x)
    return x


@pytest.mark.parametrize("select_with_where", [False, True], ids=["subsets (CPU)", "torch.where (GPU)"])
@pytest.mark.parametrize("recipe_name,size,source", [("cifar", 32, 32), ("aug_plus", 32, 32), ("v1", 32, 32),
                                                     ("aug_plus", 64, 48)])
def test_views_equal_torchvisions_ops_given_the_same_draws(recipe_name, size, source, select_with_where,
                                                           monkeypatch):
    monkeypatch.setattr(G, "SELECT_WITH_WHERE", select_with_where)  # both ways of applying ops to some images
    r = G.recipe(recipe_name, size)
    images = torch.randint(0, 256, (24, 3, source, source), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    p = G.sample_params(r, 24, source, source, torch.Generator().manual_seed(3))
    ours = G.apply_params(images, p, r, normalize=False)
    for i in range(24):
        ref = torchvision_view(images[i].float() / 255, p, i, r, recipe_name)
        assert torch.allclose(ours[i], ref, atol=2e-5), (i, (ours[i] - ref).abs().max())


def test_shrinking_crops_equal_torchvisions_antialiased_resize():
    r = G.Recipe(size=32, jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip_p=0.0)
    images = torch.rand(16, 3, 128, 96, generator=torch.Generator().manual_seed(0))  # crops of 19-128 px to 32
    p = G.sample_params(r, 16, 128, 96, torch.Generator().manual_seed(0))
    ours = G.apply_params(images, p, r, normalize=False)
    ref = torch.stack([torchvision_view(images[i], p, i, r, "aug_plus") for i in range(16)])
    assert torch.allclose(ours, ref, atol=2e-5)


def test_zero_strength_recipe_is_the_identity():
    r = G.Recipe(size=32, crop_scale=(1.0, 1.0), jitter=(0, 0, 0, 0), gray_p=0, blur_p=0, flip_p=0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    views = G.apply_params(images, G.sample_params(r, 8, 32, 32), r, normalize=False)
    assert torch.allclose(views, images.float() / 255, atol=1e-6)


def test_normalised_views_use_the_recipes_statistics_and_are_reproducible():
    r = G.recipe("cifar", 32)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = G.augment(images, r, torch.Generator().manual_seed(5))
    b = G.augment(images, r, torch.Generator().manual_seed(5))
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    p = G.sample_params(r, 8, 32, 32, torch.Generator().manual_seed(5))
    plain = G.apply_params(images, p, r, normalize=False)
    mean, std = torch.tensor(r.mean).view(1, 3, 1, 1), torch.tensor(r.std).view(1, 3, 1, 1)
    assert torch.allclose(a, (plain - mean) / std, atol=1e-6)
