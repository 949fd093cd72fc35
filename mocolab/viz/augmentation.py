"""Figures of the augmentations: what the encoder is asked to treat as "the same image".

Images are PIL images or C x H x W tensors with pixels in [0, 1] (the recipes
with normalize=False). Draws are seeded, so a figure is reproducible and two
figures with the same seed show the same random crops.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .figure import finish


def to_array(image) -> np.ndarray:
    """H x W x 3 floats in [0, 1] from a PIL image or a C x H x W tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu().permute(1, 2, 0).numpy()
        return np.clip(array, 0, 1)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def seeded_draws(transform, image, n: int, seed: int) -> list:
    """n draws of a random transform on one image, reproducible from `seed` (the caller's RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [transform(image) for _ in range(n)]


def image_grid(rows: list[list], row_titles=None, col_titles=None, cell: float = 1.6, save_to=None, captions=None):
    """A grid of images, one list per row; row titles on the left, column titles on top, captions under cells."""
    ncols = max(len(r) for r in rows)
    fig, grid = plt.subplots(
        len(rows), ncols, figsize=(cell * ncols + (1.5 if row_titles else 0), cell * len(rows)), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = grid[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(to_array(row[j]), interpolation="nearest")
            if i == 0 and col_titles and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
            if captions and j < len(captions[i]) and captions[i][j]:
                ax.set_xlabel(captions[i][j], fontsize=7)
        if row_titles:
            grid[i, 0].set_ylabel(row_titles[i], fontsize=8, rotation=0, ha="right", va="center")
    return finish(fig, save_to)


def plot_operations(image, operations: dict, draws: int = 4, seed: int = 0, save_to=None):
    """Each operation alone (one row each: the original, then `draws` random draws)."""
    rows = [[image, *seeded_draws(op, image, draws, seed)] for op in operations.values()]
    return image_grid(
        rows,
        row_titles=list(operations),
        col_titles=["original"] + [f"draw {i + 1}" for i in range(draws)],
        save_to=save_to,
    )


def plot_views(images: list, transform, views: int = 4, seed: int = 0, save_to=None):
    """Each image (a row) beside `views` augmentations of it: every pair among them is a positive pair."""
    rows = [[image, *seeded_draws(transform, image, views, seed + i)] for i, image in enumerate(images)]
    return image_grid(rows, col_titles=["original"] + [f"view {i + 1}" for i in range(views)], save_to=save_to)


def plot_positive_pairs(images: list, transform, seed: int = 0, save_to=None):
    """A batch as MoCo sees it: query crops on the top row, their key crops below, one column per image.

    In a column, q and k are a positive pair; every other key in the row is a negative.
    """
    pairs = [seeded_draws(transform, image, 2, seed + i) for i, image in enumerate(images)]
    return image_grid(
        [[p[0] for p in pairs], [p[1] for p in pairs]], row_titles=["query x_q", "key x_k"], save_to=save_to
    )


def is_gray(view) -> bool:
    """Whether a view came out grey (its three channels equal): grayscale fired, or jitter took all saturation."""
    array = to_array(view)
    return bool(
        np.allclose(array[..., 0], array[..., 1], atol=1e-3) and np.allclose(array[..., 1], array[..., 2], atol=1e-3)
    )


def plot_recipes(image, recipes: dict, draws: int = 5, seed: int = 0, save_to=None):
    """One row per recipe (e.g. MoCo v1 against v2 aug+), the same image and seeds in every row.

    Grey views are captioned and counted in the row's title: with a handful of draws
    the share of grey views can be far from the recipe's rate (0.2), and a reader
    should see that it is chance, not the recipe.
    """
    rows = [seeded_draws(transform, image, draws, seed) for transform in recipes.values()]
    grey = [[is_gray(view) for view in row] for row in rows]
    titles = [f"{name}\n({sum(g)} of {draws} grey)" for name, g in zip(recipes, grey)]
    return image_grid(
        rows, row_titles=titles, captions=[["grey" if g else "" for g in row] for row in grey], save_to=save_to
    )


def plot_blur_scales(image, sigmas=(0.1, 1.0, 2.0), sizes=(32, 224), save_to=None):
    """The same Gaussian blurs (sigma in pixels) at each image size: one row per size.

    At 224 pixels, an upscaled 32-pixel image is already smooth and sigma 2 is a
    fraction of one original pixel, so aug+'s blur barely shows; at 32 pixels the
    same sigma wipes detail out.
    """
    from torchvision.transforms import v2

    rows, captions = [], []
    for size in sizes:
        resized = v2.functional.to_image(image.convert("RGB").resize((size, size)))
        blurred = [v2.functional.gaussian_blur(resized, _kernel(sigma), [sigma]).float() / 255 for sigma in sigmas]
        rows.append([resized.float() / 255] + blurred)
        captions.append(["original"] + [f"sigma {sigma:g} px" for sigma in sigmas])
    return image_grid(
        rows, row_titles=[f"{size} x {size}" for size in sizes], captions=captions, cell=2.0, save_to=save_to
    )


def _kernel(sigma: float) -> int:
    """An odd kernel covering +-3 sigma, at least 3 wide."""
    return max(3, 2 * int(3 * sigma + 0.5) + 1)
