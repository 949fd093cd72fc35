"""The batched augmentations against the torchvision pipelines: same distributions, same pixels for the same
draws. The reference views are replayed from the torchvision pipeline object itself (its operations, their
order and parameters), so a recipe drifting on either side fails here."""

import functools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from scipy import stats
from torchvision.transforms import v2

from mocolab import augment
from mocolab.augment import batched as G
from mocolab.check.operations import Operations


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
    for name, f in {
        "area": lambda b: b[:, 2] * b[:, 3] / (height * width),
        "log aspect": lambda b: np.log(b[:, 3] / b[:, 2]),
        "top": lambda b: (b[:, 0] + b[:, 2] / 2) / height,
        "left": lambda b: (b[:, 1] + b[:, 3] / 2) / width,
    }.items():
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
    n, r = 24_000, augment.recipe("aug_plus", 32)
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


def replay(pipeline: v2.Compose, image: torch.Tensor, p: dict, i: int) -> tuple[torch.Tensor, dict]:
    """View i of `image` ([0, 1] floats) by torchvision's functional ops, walking the pipeline's own
    operations in its order with the coins and parameters of draw i of p. Also returns what the
    pipeline says of each operation (probabilities, ranges) for comparison with the batched recipe."""
    x, seen = image, {}
    jitter_ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for t in pipeline.transforms:
        prob, inner = (t.p, t.transforms[0]) if isinstance(t, v2.RandomApply) else (getattr(t, "p", 1.0), t)
        if isinstance(inner, v2.RandomResizedCrop):
            seen["crop"] = (inner.size, tuple(inner.scale), tuple(inner.ratio))
            top, left, h, w = p["box"][i].tolist()
            x = TF.resized_crop(x, top, left, h, w, list(inner.size), antialias=True)
        elif isinstance(inner, v2.RandomHorizontalFlip):
            seen["flip"] = prob
            x = TF.horizontal_flip(x) if p["flip"][i] else x
        elif isinstance(inner, v2.RandomGrayscale):
            seen["gray"] = prob
            x = TF.rgb_to_grayscale(x, num_output_channels=3) if p["gray"][i] else x
        elif isinstance(inner, v2.ColorJitter):
            seen["jitter"] = (prob, inner.brightness, inner.contrast, inner.saturation, inner.hue)
            if p["jitter"][i]:
                for k in p["order"][i].tolist():
                    x = jitter_ops[k](x, p["factors"][i, k].item())
        elif isinstance(inner, v2.GaussianBlur):
            seen["blur"] = (prob, tuple(inner.sigma), tuple(inner.kernel_size))
            if p["blur"][i]:
                s = p["sigma"][i].item()
                x = TF.gaussian_blur(x, list(inner.kernel_size), [s, s])
        elif isinstance(inner, v2.Normalize):
            x = TF.normalize(x, inner.mean, inner.std)
        elif not isinstance(inner, (v2.ToImage, v2.ToDtype)):
            raise AssertionError(f"the test does not know {inner}")
    return x, seen


def flat(value) -> tuple:
    """Nested numbers as one flat tuple, rounded so that 0.6 and 1 - 0.4 compare equal."""
    if isinstance(value, (tuple, list)):
        return tuple(x for v in value for x in flat(v))
    return (round(float(value), 9),)


def as_pipeline_says(r) -> dict:
    """The batched recipe's parameters in the form replay() reads them off a torchvision pipeline."""

    def interval(x, centre=1.0):
        return (max(0.0, centre - x), centre + x) if centre else (-x, x)

    out = {"crop": ((r.size, r.size), r.crop_scale, r.crop_ratio)}
    if r.applies("flip"):
        out["flip"] = r.flip_p
    if r.applies("gray"):
        out["gray"] = r.gray_p
    if r.applies("jitter"):
        b, c, s, h = r.jitter
        out["jitter"] = (r.jitter_p, interval(b), interval(c), interval(s), interval(h, 0.0))
    if r.applies("blur"):
        out["blur"] = (r.blur_p, r.blur_sigma, (r.blur_kernel, r.blur_kernel))
    return out


@pytest.mark.parametrize("use_torch_where", [False, True], ids=["subsets (CPU)", "torch.where (GPU)"])
@pytest.mark.parametrize("name", sorted(augment.RECIPES))
@pytest.mark.parametrize("size,source", [(32, 32), (64, 48)])
def test_every_recipe_built_both_ways_gives_the_same_views_for_the_same_draws(
    name, size, source, use_torch_where, monkeypatch
):
    monkeypatch.setattr(G, "USE_TORCH_WHERE", use_torch_where)  # both ways of applying ops to some images
    r = augment.recipe(name, size)
    pipeline = augment.pretrain_transform(name, size)  # the torchvision reference, normalised
    images = torch.randint(
        0, 256, (24, 3, source, source), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    p = G.sample_params(r, 24, source, source, torch.Generator().manual_seed(3))
    ours = G.apply_params(images, p, r)
    for i in range(24):
        ref, seen = replay(pipeline, images[i].float() / 255, p, i)
        assert torch.allclose(ours[i], ref, atol=1e-4), (i, (ours[i] - ref).abs().max())
    # The same operations, probabilities and ranges on both sides (to float rounding).
    assert {k: flat(v) for k, v in seen.items()} == {k: flat(v) for k, v in as_pipeline_says(r).items()}, name
    assert p["jitter"].float().mean() == pytest.approx(r.jitter_p, abs=0.25)  # coins drawn at the recipe's rates


def test_shrinking_crops_equal_torchvisions_antialiased_resize():
    r = augment.Recipe("crop only", size=32, jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip_p=0.0)
    images = torch.rand(16, 3, 128, 96, generator=torch.Generator().manual_seed(0))  # crops of 19-128 px to 32
    p = G.sample_params(r, 16, 128, 96, torch.Generator().manual_seed(0))
    ours = G.apply_params(images, p, r, normalize=False)
    ref = torch.stack([replay(augment.pipeline(r, normalize=False), images[i], p, i)[0] for i in range(16)])
    assert torch.allclose(ours, ref, atol=2e-5)


def test_zero_strength_recipe_is_the_identity():
    r = augment.Recipe("identity", size=32, crop_scale=(1.0, 1.0), jitter=(0, 0, 0, 0), gray_p=0, blur_p=0, flip_p=0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    views = G.apply_params(images, G.sample_params(r, 8, 32, 32), r, normalize=False)
    assert torch.allclose(views, images.float() / 255, atol=1e-6)


def test_normalised_views_use_the_recipes_statistics_and_are_reproducible():
    r = augment.recipe("cifar", 32)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = G.augment(images, r, torch.Generator().manual_seed(5))
    b = G.augment(images, r, torch.Generator().manual_seed(5))
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    p = G.sample_params(r, 8, 32, 32, torch.Generator().manual_seed(5))
    plain = G.apply_params(images, p, r, normalize=False)
    mean, std = torch.tensor(r.mean).view(1, 3, 1, 1), torch.tensor(r.std).view(1, 3, 1, 1)
    assert torch.allclose(a, (plain - mean) / std, atol=1e-6)


@pytest.mark.parametrize("name", sorted(augment.RECIPES))
def test_a_view_batch_builds_no_tensor_from_host_data(name, monkeypatch):
    """The CPU's proxy for the GPU's host syncs: a tensor built from Python data (aten.lift_fresh) is, on a GPU, a
    copy from the host that makes the stream wait. With torch.where masking, as on a GPU, a batch of views builds
    none once the per-channel constants are on the device (the first batch copies them there, once). Before, each
    view built 8: the image sides twice, the HSV constant in each of the 4 hue evaluations, mean and std."""
    monkeypatch.setattr(G, "USE_TORCH_WHERE", True)
    images = torch.randint(0, 256, (8, 3, 40, 48), dtype=torch.uint8)
    r = augment.recipe(name, 32)
    first = G.augment(images, r, torch.Generator().manual_seed(0))
    with Operations() as count:
        again = G.augment(images, r, torch.Generator().manual_seed(0))
    assert count.from_host == 0 and torch.equal(first, again)
    # Nor does it read anything back: on the meta device any read of a tensor's values raises.
    views = G.augment(torch.empty(8, 3, 40, 48, dtype=torch.uint8, device="meta"), r)
    assert views.shape == (8, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(augment.RECIPES))
def test_the_compiled_augmentation_is_one_graph_with_torchvisions_views(name):
    """compile=True's augmentation (inductor, here its C++ backend): the choices and the views each one graph with
    no break (a break would split the fused kernels and sync the host); the same choices as eager from the same
    uniforms, and the views torchvision makes with them."""
    r = augment.recipe(name, 32)
    images = torch.randint(0, 256, (24, 3, 40, 36), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    p = G.sample_params(r, 24, 40, 36, torch.Generator().manual_seed(5))
    fused = G.sample_params(r, 24, 40, 36, torch.Generator().manual_seed(5), compile=True)
    assert fused.keys() == p.keys() and all(torch.allclose(fused[k], p[k]) for k in p if k != "order")
    assert torch.equal(fused["box"], p["box"]) and torch.equal(fused["order"], p["order"])
    for fn, args in ((G.params, p_args(24, 40, 36)), (G.apply_params, (images, p))):
        explained = torch._dynamo.explain(functools.partial(fn, r=r))(*args)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (fn, explained.break_reasons)
    ours = G.compiled(G.apply_params, r)(images, p)
    assert torch.allclose(ours, G.apply_params(images, p, r), atol=2e-5)
    pipeline = augment.pretrain_transform(name, 32)
    for i in range(24):
        ref, _ = replay(pipeline, images[i].float() / 255, p, i)
        assert torch.allclose(ours[i], ref, atol=1e-4), (i, (ours[i] - ref).abs().max())


def p_args(n: int, height: int, width: int) -> tuple:
    """What sample_params hands `params`: n views' uniforms and their images' sides."""
    u = torch.rand(n, G.UNIFORMS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return u, torch.full((n,), float(height), dtype=torch.float64), torch.full((n,), float(width), dtype=torch.float64)
