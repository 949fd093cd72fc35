"""Figures of a run: the lr schedule before training, the training curves after.

Each function returns a matplotlib Figure and, given `save_to`, writes it as a PNG.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def _finish(fig, save_to):
    fig.tight_layout()
    if save_to is not None:
        fig.savefig(Path(save_to), dpi=120)
    return fig


def plot_lr_schedule(lrs: np.ndarray, steps_per_epoch: int, save_to=None):
    """Learning rate against epochs (fractional, one point per optimiser step)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(np.arange(len(lrs)) / steps_per_epoch, lrs)
    ax.set(xlabel="epoch", ylabel="learning rate", title="lr schedule")
    ax.grid(alpha=0.3)
    return _finish(fig, save_to)


def plot_training_curves(history: list[dict], steps: list[dict], K: int, save_to=None):
    """Loss with the ln(K+1) chance line, instance-discrimination accuracy, similarities, kNN top-1."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    loss_ax, acc_ax, sim_ax, knn_ax = axes
    x = [r["epoch"] for r in steps]
    loss_ax.plot(x, [r["loss"] for r in steps], lw=1, label="loss (per log step)")
    loss_ax.plot([r["epoch"] for r in history], [r["loss"] for r in history], "o-", label="epoch mean")
    loss_ax.axhline(math.log(K + 1), color="gray", ls="--", label=f"chance ln(K+1) = {math.log(K + 1):.2f}")
    loss_ax.set(xlabel="epoch", ylabel="InfoNCE loss", title="loss")
    acc_ax.plot(x, [100 * r["acc"] for r in steps])
    acc_ax.set(xlabel="epoch", ylabel="%", title="instance discrimination accuracy")
    sim_ax.plot(x, [r["pos_sim"] for r in steps], label="positive q.k+")
    sim_ax.plot(x, [r["neg_sim"] for r in steps], label="negative q.queue")
    sim_ax.set(xlabel="epoch", ylabel="cosine similarity", title="mean similarities")
    knn = [(r["epoch"], r["knn_top1"]) for r in history if r.get("knn_top1") is not None]
    if knn:
        knn_ax.plot(*zip(*knn), "o-")
    knn_ax.set(xlabel="epoch", ylabel="top-1 %", title="kNN monitor")
    for ax in (loss_ax, sim_ax):
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _finish(fig, save_to)


# ----------------------------------------------------------------------------
# Evaluation figures (results of evaluate.suite.evaluate, one dict per model)
# ----------------------------------------------------------------------------

def plot_svm_layers(results: dict[str, dict], save_to=None):
    """SVM mAP per layer, one group of bars per layer, one bar per model (e.g. MoCo vs random init)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [n for n in results if "svm" in results[n]]
    layers = list(results[names[0]]["svm"]) if names else []
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ax.bar(np.arange(len(layers)) + i * width, [results[name]["svm"][layer]["mAP"] for layer in layers], width,
               label=name)
    ax.set_xticks(np.arange(len(layers)) + width * (len(names) - 1) / 2, layers)
    ax.set(ylabel="mAP", title="linear SVM per layer")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, save_to)


def plot_low_shot(results: dict[str, dict], save_to=None):
    """Low-shot mAP against positives per class k (log scale), mean and min-max over samples."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
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
                line, = ax.plot(x, [row["mean"] for row in rows], style,
                                label=f"{name}, cost {'on test' if how.endswith('test') else 'by CV'}")
                ax.fill_between(x, [row["min"] for row in rows], [row["max"] for row in rows],
                                color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="positives per class k", ylabel="mAP", title="low-shot SVM")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _finish(fig, save_to)


def plot_knn(results: dict[str, dict], save_to=None):
    """kNN top-1 against k, per model and feature."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, r in results.items():
        for feature, by_k in r.get("knn", {}).items():
            ax.plot([int(k) for k in by_k], [v["top1"] for v in by_k.values()], "o-", label=f"{name} ({feature})")
    ax.set_xscale("log")
    ax.set(xlabel="k", ylabel="top-1 %", title="weighted kNN (T = 0.07)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, save_to)
