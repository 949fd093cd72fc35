"""Figures of the transfer benchmarks: fine-tuning loss, predicted boxes, predicted masks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .augmentation import to_array
from .figure import axes, finish


def plot_finetune_loss(rows: list[dict], title: str = "fine-tuning", save_to=None, ax=None):
    """Total loss (and each loss term, when logged) against iterations."""
    fig, ax, owned = axes(ax)
    it = [r["iteration"] for r in rows]
    ax.plot(it, [r["loss"] for r in rows], lw=2, label="total", marker="." if len(rows) < 30 else None)
    for key in sorted(k for k in rows[0] if k.startswith("loss_")):
        ax.plot(it, [r[key] for r in rows], lw=1, label=key.removeprefix("loss_"))
    ax.set(xlabel="iteration", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return finish(fig, save_to) if owned else fig


def plot_detections(
    images: list,
    outputs: list[dict],
    classes: list,
    score_threshold: float = 0.5,
    targets: list[dict] | None = None,
    save_to=None,
):
    """Images with predicted boxes (solid, labelled with class and score) and ground truth (dashed)."""
    fig, grid = plt.subplots(1, len(images), figsize=(4 * len(images), 3.6), squeeze=False)
    for i, (ax, image, out) in enumerate(zip(grid[0], images, outputs)):
        ax.imshow(to_array(image))
        for box in targets[i]["boxes"].tolist() if targets else []:
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, ls="--", ec="white"))
        keep = out["scores"] >= score_threshold
        for box, label, score in zip(
            out["boxes"][keep].tolist(), out["labels"][keep].tolist(), out["scores"][keep].tolist()
        ):
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, ec="yellow", lw=2))
            ax.text(
                box[0],
                box[1],
                f"{classes[label - 1]} {score:.2f}",
                color="black",
                fontsize=7,
                bbox={"facecolor": "yellow", "pad": 1, "lw": 0},
            )
        ax.set_title(f"{int(keep.sum())} boxes >= {score_threshold}", fontsize=8)
        ax.axis("off")
    return finish(fig, save_to)


def plot_segmentations(images: list, predictions: list, masks: list, num_classes: int = 21, save_to=None):
    """Rows: image, ground-truth mask (ignored pixels white), predicted mask; one column per image."""
    fig, grid = plt.subplots(3, len(images), figsize=(3 * len(images), 8), squeeze=False)
    cmap = plt.get_cmap("tab20", num_classes)
    for j, (image, pred, mask) in enumerate(zip(images, predictions, masks)):
        shown = np.ma.masked_equal(np.asarray(mask), 255)
        grid[0, j].imshow(to_array(image))
        grid[1, j].imshow(shown, cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
        grid[2, j].imshow(np.asarray(pred), cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
        for ax in grid[:, j]:
            ax.axis("off")
    for ax, name in zip(grid[:, 0], ("image", "ground truth", "prediction")):
        ax.set_title(name, fontsize=8, loc="left")
    return finish(fig, save_to)
