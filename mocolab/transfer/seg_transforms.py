"""The VOC12 + aug segmentation pipeline of the reference (docs/protocols.md section 3).

MMSelfSup 0.x's `configs/benchmarks/mmsegmentation/_base_/datasets/pascal_voc12.py`
(MMSegmentation 0.x's transforms), for a crop of c pixels (the reference's 512):

- training (`train_view`): rescale, keeping the aspect ratio, to fit
  (4c, c) x r with r ~ U(0.5, 2) (img_scale (2048, 512), ratio_range (0.5, 2): the
  short side of a VOC image becomes 256-1024); a random c x c crop (smaller where
  the image is), drawn again up to 10 times while one class covers 75% or more
  of its labelled pixels or it holds a single class (cat_max_ratio 0.75); a
  horizontal flip with probability 1/2; the photometric distortion; padding to
  c x c with the mean colour (0 after normalisation, as the reference pads the
  normalised image with 0) and the ignore label 255.
- testing (`eval_view`): the whole image rescaled to fit (4c, c) (short side
  512 on VOC), the prediction resized back to the mask's size and scored there.

Images are float tensors in [0, 1]; the reference works on uint8 pixels in
OpenCV, so its rounding between steps is not reproduced.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from ..augment import IMAGENET_MEAN
from ..augment.batched import hsv_to_rgb, rgb_to_hsv

IGNORE = 255
CAT_MAX_RATIO = 0.75  # RandomCrop's cat_max_ratio
CROP_TRIES = 10  # crops drawn again at most this many times


def fit_size(height: int, width: int, short: float, long: float) -> tuple[int, int]:
    """(height, width) rescaled, keeping the aspect ratio, so that the short side is at most `short` and the long
    one at most `long`, with one side reaching its bound (mmcv's imrescale, rounding half up)."""
    factor = min(short / min(height, width), long / max(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def rescale(image: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int]):
    """Bilinear for the image, without antialiasing (OpenCV's INTER_LINEAR, which the reference uses); nearest for
    the mask."""
    image = TF.resize(image, list(size), antialias=False)
    if mask is not None:
        mask = TF.resize(mask[None], list(size), interpolation=TF.InterpolationMode.NEAREST)[0]
    return image, mask


def _crop_box(height: int, width: int, crop: int) -> tuple[int, int]:
    top = int(torch.randint(0, max(height - crop, 0) + 1, ()))
    left = int(torch.randint(0, max(width - crop, 0) + 1, ()))
    return top, left


def balanced(mask: torch.Tensor, cat_max_ratio: float = CAT_MAX_RATIO) -> bool:
    """Whether a crop's mask holds two classes or more (255 left out) and none covers cat_max_ratio of them."""
    counts = torch.bincount(mask[mask != IGNORE].flatten(), minlength=1)
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio


def random_crop(image: torch.Tensor, mask: torch.Tensor, crop: int, cat_max_ratio: float = CAT_MAX_RATIO):
    """A crop x crop window (the whole side where the image is smaller), drawn again up to CROP_TRIES times while
    it is not `balanced`; the last one drawn is kept."""
    height, width = mask.shape
    top, left = _crop_box(height, width, crop)
    for _ in range(CROP_TRIES if cat_max_ratio < 1 else 0):
        if balanced(mask[top : top + crop, left : left + crop], cat_max_ratio):
            break
        top, left = _crop_box(height, width, crop)
    return image[:, top : top + crop, left : left + crop], mask[top : top + crop, left : left + crop]


def _coin() -> bool:
    return bool(torch.randint(0, 2, ()))


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """MMSegmentation's PhotoMetricDistortion, each change with probability 1/2: brightness + U(-32, 32) / 255;
    contrast x U(0.5, 1.5), before the colour changes or after them (1/2 each); saturation (HSV's S) x U(0.5, 1.5);
    hue + d / 180 of the circle, d an integer in [-18, 18) (OpenCV's hue counts half degrees). Each is clipped
    to [0, 1]. Contrast here scales the pixel values, as the reference's does (not a blend with the mean)."""
    if _coin():
        image = (image + _uniform(-32, 32) / 255).clamp(0, 1)
    contrast_last = _coin()
    if not contrast_last and _coin():
        image = (image * _uniform(0.5, 1.5)).clamp(0, 1)
    if _coin():
        h, s, v = rgb_to_hsv(image).unbind(-3)
        image = hsv_to_rgb(torch.stack([h, (s * _uniform(0.5, 1.5)).clamp(0, 1), v], dim=-3))
    if _coin():
        h, s, v = rgb_to_hsv(image).unbind(-3)
        shift = int(torch.randint(-18, 18, ())) / 180
        image = hsv_to_rgb(torch.stack([torch.remainder(h + shift, 1.0), s, v], dim=-3))
    if contrast_last and _coin():
        image = (image * _uniform(0.5, 1.5)).clamp(0, 1)
    return image


def pad(image: torch.Tensor, mask: torch.Tensor, crop: int):
    """Pad at the bottom and right to crop x crop: the image with the ImageNet mean (0 once normalised), the mask
    with the ignore label."""
    ph, pw = crop - image.shape[-2], crop - image.shape[-1]
    if ph <= 0 and pw <= 0:
        return image, mask
    out = torch.as_tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1).expand(3, crop, crop).clone()
    out[:, : image.shape[-2], : image.shape[-1]] = image
    return out, torch.nn.functional.pad(mask, (0, pw, 0, ph), value=IGNORE)


def train_size(height: int, width: int, crop: int, ratio=(0.5, 2.0)) -> tuple[int, int]:
    """The random size a training image is rescaled to: fit (4 crop, crop) x r, r ~ U(ratio) (MMSegmentation's
    Resize with img_scale (2048, 512) and ratio_range (0.5, 2) for the 512 crop)."""
    r = _uniform(*ratio)
    return fit_size(height, width, short=int(crop * r), long=int(4 * crop * r))


def train_view(
    image: torch.Tensor,
    mask: torch.Tensor,
    crop: int,
    ratio=(0.5, 2.0),
    cat_max_ratio: float = CAT_MAX_RATIO,
    flip: bool = True,
    distort: bool = True,
):
    """One training sample (see the module doc): rescale to fit (4 crop, crop) x U(ratio), crop, flip, distort,
    pad."""
    image, mask = rescale(image, mask, train_size(*mask.shape, crop, ratio))
    image, mask = random_crop(image, mask, crop, cat_max_ratio)
    if flip and _coin():
        image, mask = image.flip(-1), mask.flip(-1)
    if distort:
        image = photometric_distortion(image)
    return pad(image, mask, crop)


def eval_view(image: torch.Tensor, short: int) -> torch.Tensor:
    """The test image rescaled to fit (4 short, short); its mask stays as it is (scored at its own size)."""
    return rescale(image, None, fit_size(*image.shape[-2:], short=short, long=4 * short))[0]
