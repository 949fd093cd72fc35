"""Training diagnostics: one figure per thing to watch while MoCo trains.

Each `plot_*` function takes a run (what `pretrain` returns, or `load_run(dir)`:
anything with `.config`, `.history` (metrics.csv rows), `.steps` (steps.csv rows)
and `.output_dir`), draws into `ax` when given, and otherwise makes its own
figure and saves it as `<output_dir>/<name>.png`. `plot_training_curves` puts
them all on one page.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .figure import axes, finish, run_png


def plot_lr_schedule(lrs: np.ndarray, steps_per_epoch: int, save_to=None, ax=None):
    """Learning rate against epochs (fractional, one point per optimiser step): plot it before training."""
    fig, ax, owned = axes(ax, (6, 3))
    ax.plot(np.arange(len(lrs)) / steps_per_epoch, lrs)
    ax.set(xlabel="epoch", ylabel="learning rate", title="lr schedule")
    ax.grid(alpha=0.3)
    return finish(fig, save_to) if owned else fig


def _column(rows, key):
    return np.array([np.nan if r.get(key) in (None, "") else float(r[key]) for r in rows])


def _style(rows) -> dict:
    """Markers when a curve has few points (a short run), so single points still show."""
    return {"marker": "."} if len(rows) < 30 else {}


def _done(run, fig, ax, owned, name, save):
    if ax.get_xlabel() == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, not 0.5, 1.5, ...
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return finish(fig, run_png(run, name, save)) if owned else fig


def plot_loss(run, ax=None, save=True):
    """InfoNCE loss per log step and per epoch, with the chance line ln(K+1).

    Chance is the loss when the positive logit is no larger than the K negatives.
    A fresh encoder starts below it (two views of one image already look alike to
    it, and the first queue is random); the loss rises as real keys fill the
    queue, then falls as the encoder learns. Flat at ln(K+1): collapse.
    """
    fig, ax, owned = axes(ax)
    K = run.config.K
    ax.plot(_column(run.steps, "epoch"), _column(run.steps, "loss"), lw=1, label="per log step", **_style(run.steps))
    ax.plot(_column(run.history, "epoch"), _column(run.history, "loss"), "o-", label="epoch mean")
    ax.axhline(math.log(K + 1), color="gray", ls="--", label=f"chance ln(K+1) = {math.log(K + 1):.2f}")
    ax.set(xlabel="epoch", ylabel="InfoNCE loss", title="loss")
    return _done(run, fig, ax, owned, "loss", save)


def plot_instance_accuracy(run, ax=None, save=True):
    """How often the positive key beats all K negatives (instance discrimination), with chance 1/(K+1)."""
    fig, ax, owned = axes(ax)
    ax.plot(
        _column(run.steps, "epoch"), 100 * _column(run.steps, "acc"), lw=1, label="per log step", **_style(run.steps)
    )
    ax.plot(_column(run.history, "epoch"), 100 * _column(run.history, "acc"), "o-", label="epoch mean")
    ax.axhline(100 / (run.config.K + 1), color="gray", ls="--", label="chance 1/(K+1)")
    ax.set(xlabel="epoch", ylabel="%", title="instance-discrimination accuracy")
    return _done(run, fig, ax, owned, "instance_accuracy", save)


def plot_similarities(run, ax=None, save=True):
    """Mean cosine similarity of positive pairs (q.k+) and of queries to the queue (q.negatives).

    Healthy: positives high, negatives near 0. Both near 1: collapse (every
    image maps to one point), as with weak augmentation or a too-high lr.
    """
    fig, ax, owned = axes(ax)
    x = _column(run.steps, "epoch")
    ax.plot(x, _column(run.steps, "pos_sim"), label="positive q.k+", **_style(run.steps))
    ax.plot(x, _column(run.steps, "neg_sim"), label="negative q.queue", **_style(run.steps))
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="epoch", ylabel="cosine similarity", title="mean similarities", ylim=(-0.2, 1.05))
    return _done(run, fig, ax, owned, "similarities", save)


def plot_queue_age(run, ax=None, save=True):
    """Age of the keys in the queue, in training steps, and the share of random initial keys.

    Full, the queue holds the keys of the last K/B steps (B keys per step). The
    key encoder changes slowly, over ~1/(1-m) steps; the keys stay consistent
    with each other when K/B is small against that window.
    """
    fig, ax, owned = axes(ax)
    cfg = run.config
    if not run.steps or "key_age" not in run.steps[0]:
        ax.text(0.5, 0.5, "this run did not log key ages", ha="center", va="center", transform=ax.transAxes)
    else:
        x = _column(run.steps, "step")
        ax.plot(x, _column(run.steps, "key_age"), label="mean age", **_style(run.steps))
        ax.plot(x, _column(run.steps, "key_age_max"), label="oldest key", **_style(run.steps))
        per_step = cfg.batch_size * (2 if cfg.symmetric else 1)
        ax.axhline(cfg.K / per_step - 1, color="gray", ls="--", label=f"K/B - 1 = {cfg.K // per_step - 1}")
        window = f"; key encoder window 1/(1-m) = {1 / (1 - cfg.m):.0f} steps" if cfg.m < 1 else ""
        ax.set_title(f"queue: keys of the last {cfg.K // per_step} steps{window}", fontsize=9)
        share = ax.twinx()
        share.plot(
            x,
            100 * _column(run.steps, "random_keys"),
            color="tab:red",
            ls=":",
            label="random initial keys",
            **_style(run.steps),
        )
        share.set(ylabel="random initial keys (%)", ylim=(-2, 102))
        share.legend(fontsize=8, loc="center right")
    ax.set(xlabel="step", ylabel="age (steps)")
    return _done(run, fig, ax, owned, "queue_age", save)


KNN_MIN_SPAN = 10.0  # percentage points: an autoscaled 0.1-point range makes a wobble look like a crash


def _at_least_a_span(ax, values, span: float, low: float = 0.0, high: float = 100.0):
    """Widen the y range to `span` around the values (within [low, high]) when they vary less than that."""
    centre = (np.nanmin(values) + np.nanmax(values)) / 2
    bottom = min(max(low, centre - span / 2), high - span)
    ymin, ymax = ax.get_ylim()
    if ymax - ymin < span:
        ax.set_ylim(bottom, bottom + span)


def plot_knn_curve(run, ax=None, save=True):
    """kNN top-1 of the test split against epochs: the labelled check of a label-free training, with the online
    linear probe's top-1 on the same test images when the run trained one (cfg.online_probe).

    Epoch 0 is the random network before any step (same bank and test set): a dashed
    baseline, since a random encoder's features already classify well above chance;
    what training adds is the distance above that line.
    """
    fig, ax, owned = axes(ax)
    epochs, top1 = _column(run.history, "epoch"), _column(run.history, "knn_top1")
    measured = ~np.isnan(top1)
    probe = _column(run.history, "probe_top1")
    if measured.any():
        ax.plot(epochs[measured], top1[measured], "o-", label="MoCo encoder")
        if (~np.isnan(probe)).any():  # the second reading of the same features (cfg.online_probe)
            read = ~np.isnan(probe)
            ax.plot(epochs[read], probe[read], "s-", label="online linear probe (avgpool)")
        if (epochs[measured] == 0).any():
            baseline = top1[measured][epochs[measured] == 0][0]
            ax.axhline(baseline, color="gray", ls="--", label=f"random network (epoch 0): {baseline:.1f}%")
        _at_least_a_span(ax, np.concatenate([top1[measured], probe[~np.isnan(probe)]]), KNN_MIN_SPAN)
    else:
        ax.text(0.5, 0.5, "no kNN pass yet (knn_every)", ha="center", va="center", transform=ax.transAxes)
    cfg = run.config
    ax.set(xlabel="epoch", ylabel="top-1 %", title=f"kNN monitor ({cfg.knn_feature}, k={cfg.knn_k}, T={cfg.knn_t})")
    return _done(run, fig, ax, owned, "knn", save)


def plot_lr_applied(run, ax=None, save=True):
    """The learning rate each logged step ran with (the schedule, as applied)."""
    fig, ax, owned = axes(ax)
    ax.plot(_column(run.steps, "epoch"), _column(run.steps, "lr"), **_style(run.steps))
    ax.set(xlabel="epoch", ylabel="learning rate", title="lr as applied")
    return _done(run, fig, ax, owned, "lr", save)


def plot_beside_full_run(run, full: list[dict], full_label: str = "teaching checkpoint's run", save=True):
    """kNN top-1 and epoch-mean loss of `run` beside a longer run's metrics.csv rows (`full`; notebook 02 passes
    weights.teaching.history(), the 60-epoch cifar10_cpu run mocolab ships): what a short run would become."""
    fig, (knn_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 3.5))
    for rows, label in ((full, f"{full_label} ({len(full) - 1} epochs)"), (run.history, "this run")):
        epochs, top1 = _column(rows, "epoch"), _column(rows, "knn_top1")
        knn_ax.plot(epochs[~np.isnan(top1)], top1[~np.isnan(top1)], ".-", label=label)
        loss_ax.plot(epochs[1:], _column(rows, "loss")[1:], ".-", label=label)
    knn_ax.set(xlabel="epoch", ylabel="top-1 %", title="kNN monitor")
    loss_ax.set(xlabel="epoch", ylabel="InfoNCE loss", title="epoch-mean loss")
    for ax in (knn_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return finish(fig, run_png(run, "beside_full_run", save))


DIAGNOSTICS = (plot_loss, plot_instance_accuracy, plot_similarities, plot_queue_age, plot_knn_curve, plot_lr_applied)


def plot_training_curves(run, save=True):
    """Every diagnostic on one page (saved as curves.png)."""
    fig, grid = plt.subplots(2, 3, figsize=(17, 7))
    for plot, ax in zip(DIAGNOSTICS, grid.flat):
        plot(run, ax=ax)
    return finish(fig, run_png(run, "curves", save))
