"""The augmentation recipes as batched tensor ops with per-image random parameters (GPU or CPU).

The torchvision pipeline (transforms.py) stays the reference, and both are
built from the same `Recipe`: every draw here follows torchvision's sampling
(RandomResizedCrop.get_params, ColorJitter's factors and random order, the
probabilities), and every op follows torchvision's functional op, so a view is
the one torchvision would make with the same parameters
(tests/test_batched_augment.py checks both, for every recipe).

Sampling (`sample_params`) and applying (`apply_params`) are separate, so a
test can hand the same parameters to torchvision. Order: crop, flip, colour
jitter and grayscale (in the recipe's order), blur. Flipping commutes with the
pointwise colour ops and with the symmetric blur, so one order serves aug+
(flip last) and the CIFAR recipe (flip second).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .recipes import Recipe

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)
USE_TORCH_WHERE = None  # None: torch.where on GPUs, subsets on the CPU (see `apply_masked`); tests force either


# ----------------------------------------------------------------------------
# Sampling: one set of parameters per image
# ----------------------------------------------------------------------------


ATTEMPTS = 10  # RandomResizedCrop's tries of (area, log-ratio) before its centre-crop fallback
# A view's uniforms, drawn in one call (one kernel on a GPU, where a call per choice made eleven): the crop's
# tries (area, log-ratio, top, left) in the first 4 x ATTEMPTS columns, then one column per choice below.
COLUMNS = {
    "flip": 4 * ATTEMPTS,
    "jitter": 4 * ATTEMPTS + 1,
    "factors": slice(4 * ATTEMPTS + 2, 4 * ATTEMPTS + 6),  # brightness, contrast, saturation, hue
    "order": slice(4 * ATTEMPTS + 6, 4 * ATTEMPTS + 10),  # sort keys: a uniformly random permutation
    "gray": 4 * ATTEMPTS + 10,
    "blur": 4 * ATTEMPTS + 11,
    "sigma": 4 * ATTEMPTS + 12,
}
UNIFORMS = 4 * ATTEMPTS + 13


def sample_crops(n: int, height, width, scale, ratio, generator=None, device="cpu", attempts: int = ATTEMPTS):
    """Boxes (top, left, h, w), n x 4 long, drawn as torchvision's RandomResizedCrop.get_params (`crops`)."""
    u = torch.rand(n, attempts, 4, generator=generator, device=device, dtype=torch.float64)
    return crops(u, _sizes(height, n, device), _sizes(width, n, device), scale, ratio)


def crops(u: torch.Tensor, H: torch.Tensor, W: torch.Tensor, scale, ratio) -> torch.Tensor:
    """Boxes (top, left, h, w), n x 4 long, of torchvision's RandomResizedCrop.get_params from uniforms u
    (n x attempts x 4, float64) for images of H x W (n-long float64 tensors).

    Each try draws an area and a log-ratio; the first that fits wins; none: a centre crop with the ratio
    clamped to the range.
    """
    area = H[:, None] * W[:, None] * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    w = torch.round(torch.sqrt(area * torch.exp(log_r)))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(area / torch.exp(log_r)))
    fits = (w > 0) & (h > 0) & (w <= W[:, None]) & (h <= H[:, None])
    # The first attempt that fits (the last when none does: the fallback replaces it). The least fitting index, not
    # argmax's first maximum of fits: inductor in torch 2.11 (the GPU machines' image) returned 0 for [F, T, T...].
    attempts = torch.arange(u.shape[1], device=u.device)
    first = torch.where(fits, attempts, u.shape[1] - 1).amin(dim=1)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    w, h = pick(w), pick(h)
    top = torch.floor(pick(u[..., 2]) * (H - h + 1))
    left = torch.floor(pick(u[..., 3]) * (W - w + 1))
    # Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = W / H
    fw = torch.where(in_ratio < ratio[0], W, torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W))
    fh = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    none = ~fits.any(dim=1)
    w, h = torch.where(none, fw, w), torch.where(none, fh, h)
    top = torch.where(none, torch.div(H - h, 2, rounding_mode="floor"), top)
    left = torch.where(none, torch.div(W - w, 2, rounding_mode="floor"), left)
    return torch.stack([top, left, h, w], dim=1).long()


def _sizes(v, n: int, device) -> torch.Tensor:
    """An n-long float64 tensor of image sides on `device`, from an int (filled there: no host-to-device copy,
    which on a GPU would wait for the stream) or from a tensor of n sides."""
    if torch.is_tensor(v):
        return v.to(device=device, dtype=torch.float64).expand(n)
    return torch.full((n,), float(v), dtype=torch.float64, device=device)


def sample_params(r: Recipe, n: int, height, width, generator=None, device="cpu", compile: bool = False) -> dict:
    """Every random choice of n views: crops, flips, jitter (on, factors, order), gray, blur (on, sigma).
    One call draws the uniforms (`UNIFORMS` per view); `params` turns them into choices, compiled with compile."""
    u = torch.rand(n, UNIFORMS, generator=generator, device=device, dtype=torch.float64)
    H, W = _sizes(height, n, device), _sizes(width, n, device)
    return compiled(params, r)(u, H, W) if compile else params(u, H, W, r)


def params(u: torch.Tensor, H: torch.Tensor, W: torch.Tensor, r: Recipe) -> dict:
    """The choices of recipe r for views of H x W images, from their uniforms u (n x UNIFORMS, float64)."""

    def uniform(lo, hi, column):
        return (lo + (hi - lo) * u[:, column]).float()

    def coin(name, p):
        return u[:, COLUMNS[name]] < p

    b, c, s, h = r.jitter
    factors = COLUMNS["factors"].start
    return {
        "box": crops(u[:, : 4 * ATTEMPTS].unflatten(1, (ATTEMPTS, 4)), H, W, r.crop_scale, r.crop_ratio),
        "flip": coin("flip", r.flip_p),
        "jitter": coin("jitter", r.jitter_p),
        # ColorJitter's factor ranges: [max(0, 1 - x), 1 + x] for b, c, s and [-h, h] for hue.
        "factors": torch.stack(
            [
                uniform(max(0, 1 - b), 1 + b, factors),
                uniform(max(0, 1 - c), 1 + c, factors + 1),
                uniform(max(0, 1 - s), 1 + s, factors + 2),
                uniform(-h, h, factors + 3),
            ],
            dim=1,
        ),
        "order": u[:, COLUMNS["order"]].argsort(dim=1),  # a random permutation each
        "gray": coin("gray", r.gray_p),
        "blur": coin("blur", r.blur_p),
        "sigma": uniform(*r.blur_sigma, COLUMNS["sigma"]),
    }


# ----------------------------------------------------------------------------
# The ops, batched (images: N x 3 x H x W floats in [0, 1])
# ----------------------------------------------------------------------------


def resize_weights(start: torch.Tensor, length: torch.Tensor, total: int, out: int) -> torch.Tensor:
    """N x out x total matrices that crop [start, start + length) of an axis and resize it to `out` pixels.

    The weights of torchvision's bilinear resize with antialias=True (PIL's
    algorithm): a triangle filter widened by the scale when shrinking, plain
    bilinear interpolation (edge pixels repeated) when enlarging.
    """
    dev = start.device
    scale = (length.double() / out)[:, None, None]  # N x 1 x 1
    support = scale.clamp(min=1.0)
    center = scale * (torch.arange(out, device=dev, dtype=torch.float64)[None, :, None] + 0.5)  # N x out x 1
    rel = torch.arange(total, device=dev, dtype=torch.float64)[None, None, :] - start.double()[:, None, None]
    lo = torch.trunc(center - support + 0.5).clamp(min=0)
    hi = torch.minimum(torch.trunc(center + support + 0.5), length.double()[:, None, None])
    w = (1 - ((rel - center + 0.5) / support).abs()).clamp(min=0) * ((rel >= lo) & (rel < hi))
    return (w / w.sum(dim=2, keepdim=True)).float()  # N x out x total


def resized_crops(images: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) and resize to size x size: N x 3 x size x size.

    Two batched matrix products per image (rows, then columns) with the weights of
    torchvision's antialiased bilinear resize, so a view equals
    torchvision's resized_crop for the same box, shrinking or enlarging.
    """
    top, left, h, w = box.unbind(1)
    rows = resize_weights(top, h, images.shape[-2], size)  # N x size x H
    cols = resize_weights(left, w, images.shape[-1], size)  # N x size x W
    return rows[:, None] @ images @ cols.transpose(1, 2)[:, None]  # N x 3 x size x size


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x, y, factor):
    return (factor * x + (1 - factor) * y).clamp(0, 1)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def adjust_brightness(x, f):
    return (x * _per_image(f)).clamp(0, 1)


def adjust_contrast(x, f):
    return _blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), _per_image(f))


def adjust_saturation(x, f):
    return _blend(x, grayscale(x), _per_image(f))


def adjust_hue(x, f):
    """Rotate the hue by f (in turns, per image) through HSV, as torchvision's adjust_hue."""
    h, s, v = rgb_to_hsv(x).unbind(-3)
    h = torch.remainder(h + _per_image(f)[:, 0], 1.0)
    return hsv_to_rgb(torch.stack([h, s, v], dim=-3))


def rgb_to_hsv(x):
    """H, S, V in [0, 1] of RGB images in [0, 1] (... x 3 x H x W), by torchvision's formula."""
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(dim=-3), x.amin(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=-3)


def hsv_to_rgb(x):
    """The branch-free form of the sector formula torchvision uses: channel n (5: R, 3: G, 1: B) is
    v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6."""
    h, s, v = x.unbind(-3)
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(3, 1, 1)  # 5, 3, 1, made on the device
    k = torch.remainder(n + 6.0 * h.unsqueeze(-3), 6.0)  # N x 3 x H x W
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return (v.unsqueeze(-3) * (1.0 - s.unsqueeze(-3) * ramp)).clamp(0.0, 1.0)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def apply_masked(mask: torch.Tensor, fn, x: torch.Tensor, *per_image: torch.Tensor) -> torch.Tensor:
    """fn(x, *per_image) on the images where mask is true, x elsewhere.

    On a GPU, fn runs on the whole batch and `torch.where` selects: more
    arithmetic, but no host sync to find the images. On the CPU, where
    arithmetic is the cost, fn runs on the selected images only. Compiled
    (`compiled`), always torch.where: a subset's size would be a new shape.
    """
    if torch.compiler.is_compiling() or (x.is_cuda if USE_TORCH_WHERE is None else USE_TORCH_WHERE):
        return torch.where(mask.view(-1, 1, 1, 1), fn(x, *per_image), x)
    idx = mask.nonzero()[:, 0]
    if len(idx) == 0:
        return x
    x = x.clone()
    x[idx] = fn(x[idx], *(v[idx] for v in per_image))
    return x


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-image factors (N x 4) applied in a per-image order (N x 4 permutation):
    slot by slot, every image gets the op its order names in that slot."""
    for slot in range(4):
        for k, op in enumerate(JITTER_OPS):
            x = apply_masked(order[:, slot] == k, op, x, factors[:, k])
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, reflect padding (torchvision's gaussian_blur)."""
    N, C, H, W = x.shape
    half = (kernel - 1) * 0.5
    t = torch.linspace(-half, half, kernel, device=x.device, dtype=x.dtype)
    k1d = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k1d = (k1d / k1d.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)  # (N*C) x kernel
    y = F.pad(x.reshape(1, N * C, H, W), [kernel // 2] * 4, mode="reflect")
    y = F.conv2d(y, k1d[:, None, None, :], groups=N * C)  # along the width
    y = F.conv2d(y, k1d[:, None, :, None], groups=N * C)  # along the height
    return y.view(N, C, H, W)


@functools.lru_cache(maxsize=64)
def _channel_constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 1 x 3 x 1 x 1 tensor of per-channel values on `device`, copied there once per process: a copy from the
    host at every call would make the GPU's stream wait for it."""
    return torch.tensor(values, dtype=dtype).view(1, 3, 1, 1).to(device)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, for N x 3 x H x W images."""
    # Compiled, the constants are the graph's, made once when it is traced: no cache to consult (dynamo would skip it)
    constant = _channel_constant.__wrapped__ if torch.compiler.is_compiling() else _channel_constant
    mean = constant(tuple(map(float, mean)), x.device, x.dtype)
    return (x - mean) / constant(tuple(map(float, std)), x.device, x.dtype)


def finish_views(x: torch.Tensor, p: dict, r: Recipe, normalized: bool = True) -> torch.Tensor:
    """Flip, colour, blur and normalise cropped views (N x 3 x S x S floats in [0, 1])."""
    if r.applies("flip"):
        x = torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
    x = apply_color(x, p, r)
    return normalize(x, r.mean, r.std) if normalized else x


def apply_params(images: torch.Tensor, p: dict, r: Recipe, normalize: bool = True) -> torch.Tensor:
    """Views of `images` (N x 3 x H x W, uint8 or float in [0, 1]) with the parameters of sample_params."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return finish_views(resized_crops(x, p["box"], r.size), p, r, normalize)


def apply_color(x: torch.Tensor, p: dict, r: Recipe) -> torch.Tensor:
    """Jitter, grayscale and blur of already cropped views (N x 3 x S x S floats in [0, 1])."""

    def gray(v):
        return grayscale(v).expand_as(v)

    if r.applies("gray") and r.gray_first:
        x = apply_masked(p["gray"], gray, x)
    if r.applies("jitter"):
        x = apply_masked(p["jitter"], color_jitter, x, p["factors"], p["order"])
    if r.applies("gray") and not r.gray_first:
        x = apply_masked(p["gray"], gray, x)
    if r.applies("blur"):
        x = apply_masked(p["blur"], lambda v, sigma: gaussian_blur(v, sigma, r.blur_kernel), x, p["sigma"])
    return x


def augment(images: torch.Tensor, r: Recipe, generator=None, compile: bool = False) -> torch.Tensor:
    """One random view of every image (N x 3 x H x W, same size), on the images' device.
    compile: the choices and the views through `compiled` (`params`, `apply_params`)."""
    p = sample_params(r, len(images), images.shape[-2], images.shape[-1], generator, images.device, compile)
    return compiled(apply_params, r)(images, p) if compile else apply_params(images, p, r)


def compiles(wanted, device) -> bool:
    """Whether a data path on `device` applies its augmentation `compiled` (any `compile` but False): on a GPU
    only. The fused form evaluates every op on every image, which is what a GPU wants (no sync, few launches) and
    what a CPU does not (benchmarks/augment_time.py)."""
    return bool(wanted) and torch.device(device).type == "cuda"


@functools.cache
def compiled(fn, r: Recipe, backend: str = "inductor"):
    """fn(...) of recipe r (params, apply_params or finish_views) compiled as one graph of static shapes
    (torch.compile).

    Eager, a view batch is some 480 operations (every jitter op evaluated in each of the four slots, then selected)
    and its choices some 80, each a kernel launch on a GPU. Compiled, the pointwise chains (jitter, grayscale,
    normalisation; the choices' arithmetic) fuse into a few kernels. The uniforms are drawn eagerly, in one call,
    so the choices and views are those of the same draws (within float rounding). The first call of each batch
    shape compiles (seconds to a minute)."""
    return torch.compile(functools.partial(fn, r=r), dynamic=False, backend=backend)
