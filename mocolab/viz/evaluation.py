"""Figures of the evaluation suite: the results of evaluate.suite.evaluate, one dict per model."""

from __future__ import annotations

import numpy as np

from .figure import axes, finish


def plot_svm_layers(results: dict[str, dict], save_to=None):
    """SVM mAP per layer, one group of bars per layer, one bar per model (e.g. MoCo vs random init)."""
    fig, ax, _ = axes(figsize=(7, 3.5))
    names = [n for n in results if "svm" in results[n]]
    layers = list(results[names[0]]["svm"]["layers"]) if names else []
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ax.bar(
            np.arange(len(layers)) + i * width,
            [results[name]["svm"]["layers"][layer]["mAP"] for layer in layers],
            width,
            label=name,
        )
    ax.set_xticks(np.arange(len(layers)) + width * (len(names) - 1) / 2, layers)
    ax.set(ylabel="mAP", title="linear SVM per layer")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return finish(fig, save_to)


def plot_low_shot(results: dict[str, dict], save_to=None):
    """Low-shot mAP against positives per class k (log scale), mean and min-max over samples."""
    fig, ax, _ = axes()
    for name, r in results.items():
        if "lowshot" not in r:
            continue
        by_k = r["lowshot"]["by_k"]
        ks = [int(k) for k in by_k]
        for how, style in (("cost_picked_on_test", "o-"), ("cost_picked_by_cv", "s--")):
            rows = [by_k[str(k)].get(how) for k in ks]
            pts = [(k, row) for k, row in zip(ks, rows) if row]
            if pts:
                x, rows = zip(*pts)
                (line,) = ax.plot(
                    x,
                    [row["mean"] for row in rows],
                    style,
                    label=f"{name}, cost {'on test' if how.endswith('test') else 'by CV'}",
                )
                ax.fill_between(
                    x, [row["min"] for row in rows], [row["max"] for row in rows], color=line.get_color(), alpha=0.15
                )
    ax.set_xscale("log", base=2)
    ax.set(xlabel="positives per class k", ylabel="mAP", title="low-shot SVM")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return finish(fig, save_to)


def plot_knn(results: dict[str, dict], save_to=None):
    """kNN top-1 against k, per model and feature."""
    fig, ax, _ = axes()
    T = None
    for name, r in results.items():
        if "knn" not in r:
            continue
        T = r["knn"]["settings"]["T"]
        for feature, by_k in r["knn"]["features"].items():
            ax.plot([int(k) for k in by_k], [v["top1"] for v in by_k.values()], "o-", label=f"{name} ({feature})")
    ax.set_xscale("log")
    ax.set(xlabel="k", ylabel="top-1 %", title=f"weighted kNN (T = {T})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return finish(fig, save_to)
