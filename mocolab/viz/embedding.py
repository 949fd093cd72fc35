"""Figures of an embedding: 2-D maps coloured by class, thumbnails, retrieval, similarity histograms,
and the alignment-uniformity plane (the numbers come from evaluate.embedding)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from .augmentation import to_array
from .figure import finish


def plot_embeddings(maps: dict, labels, classes: list, ncols: int = 2, save_to=None):
    """One scatter per 2-D map (title -> N x 2 coordinates), points coloured by class, one shared legend."""
    labels = np.asarray(labels)
    nrows = -(-len(maps) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, (title, xy) in zip(grid.flat, maps.items()):
        for c, name in enumerate(classes):
            ax.scatter(*np.asarray(xy)[labels == c].T, s=4, color=cmap(c % cmap.N), label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(grid.flat)[len(maps) :]:
        ax.axis("off")
    handles, names = grid.flat[0].get_legend_handles_labels()
    # One row of classes under the maps: beside a wide grid a legend would float far from the last column.
    rows = -(-len(names) // 10)
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 10), markerscale=3, fontsize=8, frameon=False)
    return finish(fig, save_to, rect=(0, 0.3 * rows / fig.get_figheight(), 1, 1))


def plot_thumbnails(
    xy, images: list, labels=None, classes=None, max_images: int = 300, zoom: float = 0.6, seed: int = 0, save_to=None
):
    """A 2-D map with image thumbnails at (a random subset of) the points: what lies near what."""
    xy = np.asarray(xy)
    fig, ax = plt.subplots(figsize=(9, 9))
    if labels is not None:
        ax.scatter(*xy.T, s=3, c=np.asarray(labels), cmap="tab10", alpha=0.4)
    shown = np.random.default_rng(seed).permutation(len(xy))[:max_images]
    for i in shown:
        box = OffsetImage(to_array(images[i]), zoom=zoom)
        ax.add_artist(AnnotationBbox(box, xy[i], frameon=False, pad=0))
    ax.set_title(f"{len(shown)} of {len(xy)} images at their embedded positions", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return finish(fig, save_to)


def plot_retrieval(
    queries: list,
    neighbours: list[list],
    query_labels,
    neighbour_labels,
    classes: list,
    similarities=None,
    save_to=None,
):
    """Each query (left column) with its nearest neighbours; green frame: same class, red: another."""
    k = len(neighbours[0])
    fig, grid = plt.subplots(len(queries), k + 1, figsize=(1.4 * (k + 1), 1.5 * len(queries)), squeeze=False)
    for i, (query, row) in enumerate(zip(queries, neighbours)):
        cells = [(query, classes[query_labels[i]], "black")]
        for j, image in enumerate(row):
            same = neighbour_labels[i][j] == query_labels[i]
            sim = f" {similarities[i][j]:.2f}" if similarities is not None else ""
            cells.append((image, classes[neighbour_labels[i][j]] + sim, "tab:green" if same else "tab:red"))
        for ax, (image, text, colour) in zip(grid[i], cells):
            ax.imshow(to_array(image))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(text, fontsize=7)
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(3)
    grid[0, 0].set_title("query", fontsize=8)
    for j in range(1, k + 1):
        grid[0, j].set_title(f"#{j}", fontsize=8)
    return finish(fig, save_to)


def plot_similarity_histograms(pairs: dict, bins: int = 60, save_to=None):
    """Per model (name -> (positive, negative) cosine similarities): two histograms on one axis.

    Trained: positives near 1, negatives around 0, well apart. Collapsed: both near 1.
    Untrained: both high and overlapping (a random network maps everything alike).
    """
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 3.3), squeeze=False)
    for ax, (name, (pos, neg)) in zip(axes[0], pairs.items()):
        edges = np.linspace(-1, 1, bins + 1)
        ax.hist(neg, edges, density=True, alpha=0.6, label=f"negatives (mean {np.mean(neg):.2f})")
        ax.hist(pos, edges, density=True, alpha=0.6, label=f"positive pairs (mean {np.mean(pos):.2f})")
        ax.set(title=name, xlabel="cosine similarity", ylabel="density")
        ax.legend(fontsize=7)
    return finish(fig, save_to)


def plot_alignment_uniformity(points: dict, save_to=None):
    """Models on the (uniformity, alignment) plane (name -> (alignment, uniformity)); lower-left is better.

    Wang and Isola 2020: good contrastive representations are both aligned
    (positive pairs close) and uniform (features spread over the sphere).
    """
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (align, unif) in points.items():
        ax.scatter(unif, align, s=40)
        ax.annotate(name, (unif, align), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(
        xlabel="uniformity  log E exp(-2 |f(x) - f(y)|²)",
        ylabel="alignment  E |f(x) - f(x+)|²",
        title="alignment and uniformity",
    )
    ax.grid(alpha=0.3)
    return finish(fig, save_to)
