"""What every figure function shares: draw into given axes or a new figure, and save it as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt


def axes(ax=None, figsize=(6, 3.5)):
    """(figure, axes, owned): the given axes, or a new figure of one axes that the caller finishes."""
    if ax is not None:
        return ax.figure, ax, False
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax, True


def finish(fig, save_to=None, rect=None):
    """Lay the figure out (within rect, leaving room for a figure legend) and, given a path, write it as a PNG."""
    fig.tight_layout(rect=rect)
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(save_to), dpi=120)
    return fig


def run_png(run, name: str, save: bool):
    """The PNG path of a diagnostic in a run's output directory, or None when not saving."""
    return Path(run.output_dir) / f"{name}.png" if save and run.output_dir is not None else None
