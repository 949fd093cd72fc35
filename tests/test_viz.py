"""Every figure function returns a figure with the expected panels, and saves its PNG where it says."""

import math
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from mocolab import make_config, viz  # noqa: E402


@pytest.fixture
def run(tmp_path):
    """A small run: 2 epochs of 4 steps, K=64, batch 16 (so the queue spans 4 steps), kNN after epoch 2."""
    cfg = make_config("cifar10_demo", K=64, batch_size=16, epochs=2, m=0.99)
    steps = [
        {
            "step": s,
            "epoch": s / 4,
            "lr": 0.06,
            "loss": 4.0 - 0.1 * s,
            "acc": 0.05 * s,
            "pos_sim": 0.9,
            "neg_sim": 0.1,
            "key_age": min(s - 1, 3) / 2,
            "key_age_max": min(s - 1, 3),
            "random_keys": max(0.0, 1 - s / 4),
        }
        for s in range(1, 9)
    ]
    history = [
        {"epoch": 1, "loss": 3.7, "acc": 0.1, "knn_top1": None},
        {"epoch": 2, "loss": 3.3, "acc": 0.3, "knn_top1": 31.5},
    ]
    return SimpleNamespace(config=cfg, steps=steps, history=history, output_dir=tmp_path)


def lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_loss_figure_has_the_chance_line_at_ln_k_plus_1(run):
    fig = viz.plot_loss(run)
    (ax,) = fig.axes
    chance = next(line for label, line in lines(ax).items() if label.startswith("chance"))
    assert np.allclose(chance.get_ydata(), math.log(65))
    assert np.allclose(lines(ax)["per log step"].get_ydata(), [r["loss"] for r in run.steps])
    assert (run.output_dir / "loss.png").stat().st_size > 5_000


def test_accuracy_and_similarity_figures_plot_the_logged_values_in_percent_and_cosine(run):
    (acc_ax,) = viz.plot_instance_accuracy(run).axes
    assert np.allclose(lines(acc_ax)["per log step"].get_ydata(), [100 * r["acc"] for r in run.steps])
    assert np.allclose(lines(acc_ax)["chance 1/(K+1)"].get_ydata(), 100 / 65)
    (sim_ax,) = viz.plot_similarities(run).axes
    assert set(lines(sim_ax)) >= {"positive q.k+", "negative q.queue"}
    assert (run.output_dir / "instance_accuracy.png").exists() and (run.output_dir / "similarities.png").exists()


def test_queue_age_figure_marks_the_steady_state_and_the_random_keys(run):
    fig = viz.plot_queue_age(run)
    ax, share = fig.axes  # ages, and the share of random initial keys on a twin axis
    steady = next(line for label, line in lines(ax).items() if label.startswith("K/B - 1"))
    assert np.allclose(steady.get_ydata(), 64 / 16 - 1)
    assert np.allclose(lines(ax)["oldest key"].get_ydata(), [0, 1, 2, 3, 3, 3, 3, 3])
    assert np.allclose(lines(share)["random initial keys"].get_ydata()[:4], [75, 50, 25, 0])
    assert "1/(1-m) = 100 steps" in ax.get_title()


def test_queue_age_figure_of_an_old_run_says_it_was_not_logged(run):
    for row in run.steps:
        del row["key_age"]
    (ax,) = viz.plot_queue_age(run, save=False).axes
    assert "did not log" in ax.texts[0].get_text()
    assert not (run.output_dir / "queue_age.png").exists()


def test_knn_curve_plots_only_the_epochs_with_a_kNN_pass(run):
    (ax,) = viz.plot_knn_curve(run).axes
    (line,) = ax.get_lines()
    assert line.get_xdata().tolist() == [2.0] and line.get_ydata().tolist() == [31.5]


def test_knn_curve_spans_at_least_ten_points_and_epochs_are_whole(run):
    """A 0.1-point wobble must not fill the panel (it would look like a crash), and ticks are whole epochs."""
    run.history.insert(0, {"epoch": 0, "loss": None, "acc": None, "knn_top1": 31.45})
    (ax,) = viz.plot_knn_curve(run).axes
    low, high = ax.get_ylim()
    assert high - low >= viz.training.KNN_MIN_SPAN and low <= 31.45 and high >= 31.5
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    run.history.append({"epoch": 3, "loss": 3.0, "acc": 0.4, "knn_top1": 80.0})  # a real rise keeps its own scale
    (ax,) = viz.plot_knn_curve(run).axes
    assert ax.get_ylim()[0] < 31.45 and ax.get_ylim()[1] > 80


def test_knn_curve_draws_epoch_0_as_the_random_networks_dashed_baseline(run):
    run.history.insert(0, {"epoch": 0, "loss": None, "acc": None, "knn_top1": 25.9})
    (ax,) = viz.plot_knn_curve(run).axes
    curve, baseline = lines(ax)["MoCo encoder"], lines(ax)["random network (epoch 0): 25.9%"]
    assert curve.get_xdata().tolist() == [0.0, 2.0] and curve.get_ydata().tolist() == [25.9, 31.5]
    assert baseline.get_linestyle() == "--" and list(baseline.get_ydata()) == [25.9, 25.9]
    (loss_ax,) = viz.plot_loss(run).axes
    assert np.isnan(lines(loss_ax)["epoch mean"].get_ydata()[0])  # no loss before the first step


def test_knn_curve_draws_the_online_probe_beside_knn_where_it_was_read(run):
    run.history.insert(0, {"epoch": 0, "loss": None, "acc": None, "knn_top1": 25.9})
    run.history[-1]["probe_top1"] = 40.5  # read with the last kNN pass only
    (ax,) = viz.plot_knn_curve(run).axes
    probe = lines(ax)["online linear probe (avgpool)"]
    assert probe.get_xdata().tolist() == [2.0] and probe.get_ydata().tolist() == [40.5]
    assert "MoCo encoder" in lines(ax)


def test_training_curves_page_has_every_diagnostic(run):
    fig = viz.plot_training_curves(run)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:3] == ["loss", "instance-discrimination accuracy", "mean similarities"]
    assert titles[3].startswith("queue: keys of the last 4 steps")
    assert titles[4].startswith("kNN monitor") and titles[5] == "lr as applied"
    assert (run.output_dir / "curves.png").exists() and not (run.output_dir / "loss.png").exists()


def test_lr_schedule_figure_spans_the_epochs(tmp_path):
    lrs = np.linspace(0.06, 0, 20)
    fig = viz.plot_lr_schedule(lrs, steps_per_epoch=4, save_to=tmp_path / "sub" / "lr.png")
    (line,) = fig.axes[0].get_lines()
    assert line.get_xdata()[-1] == pytest.approx(19 / 4) and (tmp_path / "sub" / "lr.png").exists()


def test_evaluation_figures_have_one_series_per_model(tmp_path):
    results = {
        name: {
            "svm": {"layers": {"feat1": {"mAP": 40.0}, "avgpool": {"mAP": 30.0 + i}}},
            "knn": {"settings": {"T": 0.07}, "features": {"avgpool": {"10": {"top1": 30.0}, "20": {"top1": 31.0}}}},
            "lowshot": {
                "by_k": {
                    "1": {"cost_picked_on_test": {"mean": 20, "min": 18, "max": 22}},
                    "2": {"cost_picked_on_test": {"mean": 25, "min": 24, "max": 26}},
                }
            },
        }
        for i, name in enumerate(("MoCo", "random"))
    }
    (ax,) = viz.plot_svm_layers(results, save_to=tmp_path / "svm.png").axes
    assert len(ax.patches) == 4 and [t.get_text() for t in ax.get_xticklabels()] == ["feat1", "avgpool"]
    assert [p.get_height() for p in ax.patches] == [40.0, 30.0, 40.0, 31.0]
    (knn,) = viz.plot_knn(results).axes
    assert len(knn.get_lines()) == 2 and knn.get_title() == "weighted kNN (T = 0.07)"
    assert len(viz.plot_low_shot(results).axes[0].get_lines()) == 2


# ----------------------------------------------------------------------------
# Augmentation and embedding figures
# ----------------------------------------------------------------------------


def small_images(n, size=32):
    from PIL import Image

    return [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)) for i in range(n)
    ]


def shown(ax):
    return ax.get_images()[0].get_array()


def test_operation_figure_has_a_row_per_operation_and_reproducible_draws(tmp_path):
    from mocolab import augment

    image = small_images(1)[0]
    ops = augment.operations(augment.recipe("aug_plus", 48))
    fig = viz.plot_operations(image, ops, draws=3, seed=5, save_to=tmp_path / "ops.png")
    assert len(fig.axes) == len(ops) * 4 and fig.axes[0].get_title() == "original"
    assert [fig.axes[4 * r].get_ylabel() for r in range(len(ops))] == list(ops)
    again = viz.plot_operations(image, ops, draws=3, seed=5)
    assert all(np.array_equal(shown(a), shown(b)) for a, b in zip(fig.axes, again.axes))
    assert shown(fig.axes[1]).shape == (48, 48, 3) and (tmp_path / "ops.png").exists()


def test_seeded_draws_leave_the_callers_random_stream_alone():
    import torch

    from mocolab import augment
    from mocolab.viz.augmentation import seeded_draws

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    seeded_draws(augment.aug_plus(32, normalize=False), small_images(1)[0], 4, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_views_pairs_and_recipe_figures_lay_out_images_as_documented():
    from mocolab import augment

    images = small_images(3)
    views = viz.plot_views(images, augment.aug_plus(32, normalize=False), views=4)
    assert len(views.axes) == 3 * 5
    pairs = viz.plot_positive_pairs(images, augment.cifar_demo(32, normalize=False))
    assert len(pairs.axes) == 2 * 3 and pairs.axes[0].get_ylabel() == "query x_q"
    assert not np.array_equal(shown(pairs.axes[0]), shown(pairs.axes[3]))  # q and k are different crops
    recipes = {"v1": augment.aug_v1(32, normalize=False), "v2 aug+": augment.aug_plus(32, normalize=False)}
    fig = viz.plot_recipes(images[0], recipes, draws=5)
    assert len(fig.axes) == 10 and fig.axes[5].get_ylabel().startswith("v2 aug+\n")
    for row, name in ((0, "v1"), (1, "v2 aug+")):  # the grey views are captioned, and counted in the row title
        cells = fig.axes[5 * row : 5 * row + 5]
        grey = [bool(np.ptp(shown(ax), axis=-1).max() < 1e-3) for ax in cells]
        assert [ax.get_xlabel() == "grey" for ax in cells] == grey
        assert fig.axes[5 * row].get_ylabel() == f"{name}\n({sum(grey)} of 5 grey)"


def test_blur_is_shown_at_each_size_with_its_sigma():
    fig = viz.plot_blur_scales(small_images(1)[0], sigmas=(1.0, 2.0), sizes=(32, 64))
    assert len(fig.axes) == 6 and fig.axes[4].get_xlabel() == "sigma 1 px"
    original, blurred = shown(fig.axes[0]), shown(fig.axes[2])
    assert original.shape[:2] == (32, 32) and shown(fig.axes[3]).shape[:2] == (64, 64)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(original, axis=1)).mean()  # smoother


def test_embedding_maps_have_a_panel_per_map_and_one_legend_of_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    maps = {name: rng.normal(size=(50, 2)) for name in ("random UMAP", "MoCo UMAP", "MoCo t-SNE")}
    fig = viz.plot_embeddings(maps, labels, ["cat", "dog", "ship"], save_to=tmp_path / "maps.png")
    assert [ax.get_title() for ax in fig.axes[:3]] == list(maps) and not fig.axes[3].axison
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["cat", "dog", "ship"]
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 50


def test_thumbnail_map_places_the_requested_number_of_images():
    from matplotlib.offsetbox import AnnotationBbox

    xy = np.random.default_rng(0).normal(size=(40, 2))
    fig = viz.plot_thumbnails(xy, small_images(40), labels=np.zeros(40, int), max_images=25)
    boxes = [a for a in fig.axes[0].artists if isinstance(a, AnnotationBbox)]
    assert len(boxes) == 25 and all(tuple(b.xy) in {tuple(p) for p in xy} for b in boxes)


def test_retrieval_figure_frames_neighbours_by_class():
    images = small_images(6)
    fig = viz.plot_retrieval(
        images[:2],
        [images[2:5], images[3:6]],
        [0, 1],
        [[0, 1, 0], [1, 1, 2]],
        ["a", "b", "c"],
        similarities=np.full((2, 3), 0.5),
    )
    assert len(fig.axes) == 2 * 4
    colours = [ax.spines["top"].get_edgecolor() for ax in fig.axes]
    green, red = matplotlib.colors.to_rgba("tab:green"), matplotlib.colors.to_rgba("tab:red")
    assert colours[1:4] == [green, red, green] and colours[5:8] == [green, green, red]
    assert fig.axes[1].get_xlabel() == "a 0.50"


def test_similarity_histograms_and_alignment_uniformity_plane():
    rng = np.random.default_rng(0)
    pairs = {
        "random init": (rng.uniform(0.8, 1, 100), rng.uniform(0.7, 1, 900)),
        "MoCo": (rng.uniform(0.6, 1, 100), rng.uniform(-0.3, 0.3, 900)),
    }
    fig = viz.plot_similarity_histograms(pairs)
    assert [ax.get_title() for ax in fig.axes] == list(pairs) and all(len(ax.patches) == 120 for ax in fig.axes)
    fig = viz.plot_alignment_uniformity({"random init": (0.1, -0.2), "MoCo": (0.6, -3.1)})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["random init", "MoCo"]
    assert np.allclose(ax.collections[1].get_offsets(), [[-3.1, 0.6]])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
