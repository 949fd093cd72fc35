"""Figures of sweeps (mocolab.sweep): curves of several runs, and the ablations' verdicts at a glance."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

from .figure import finish


def plot_sweep(rows: list[dict], title: str = "", save_to=None):
    """kNN top-1 and loss per epoch, one line per variant (collect()'s rows); epoch 0 is the random network."""
    fig, (knn_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for variant in dict.fromkeys(row["variant"] for row in rows):
        runs = [r for r in rows if r["variant"] == variant and r["epoch"] is not None]
        knn = [(r["epoch"], r["knn_top1"]) for r in runs if r["knn_top1"] is not None]
        loss = [(r["epoch"], r["loss"]) for r in runs if r["loss"] is not None]
        (line,) = knn_ax.plot(*zip(*knn), "o-", ms=3, label=variant) if knn else knn_ax.plot([], [], label=variant)
        if loss:
            loss_ax.plot(*zip(*loss), "o-", ms=3, color=line.get_color())
    knn_ax.set(xlabel="epoch", ylabel="kNN top-1 %", title=f"{title}: kNN" if title else "kNN")
    loss_ax.set(xlabel="epoch", ylabel="InfoNCE loss", title=f"{title}: loss" if title else "loss")
    for ax in (knn_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    knn_ax.legend(fontsize=8)
    return finish(fig, save_to)


def plot_verdicts(results: dict[str, list[dict]], save_to=None):
    """One bar chart per ablation: each variant's final kNN top-1 (mean over its seeds, their standard deviation
    as the error bar), titled with the claim's verdict."""
    from ..ablations import seed_values, spread, verdict

    n = len(results)
    cols = min(n, 4)
    fig, axs = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 2.9 * math.ceil(n / cols)), squeeze=False)
    for ax, (name, rows) in zip(axs.flat, results.items()):
        knn, says = verdict(name, rows)
        names = [v for v, value in knn.items() if value is not None]
        values = seed_values(rows)
        bars = ax.bar(
            range(len(names)),
            [knn[v] for v in names],
            yerr=[spread(values[v])[1] for v in names],  # the seeds' standard deviation (0 for one seed)
            capsize=3,
            color="tab:green" if says == "holds" else "tab:red" if says == "does not hold here" else "tab:gray",
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{name}: {says.split(':')[0]}", fontsize=9)
        ax.set_ylabel("final kNN top-1 %", fontsize=8)
        if names:
            low = min(knn[v] for v in names)
            ax.set_ylim(max(0.0, low - 10), max(knn[v] for v in names) + 5)
    for ax in list(axs.flat)[n:]:
        ax.axis("off")
    return finish(fig, save_to)
