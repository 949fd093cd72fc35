"""SVM protocol: VOC AP on hand-made cases, the batched solver against scikit-learn's LinearSVC
on real CIFAR-10 features, low-shot sampling."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mocolab import augment
from mocolab.data import load_split, seeded_subset
from mocolab.evaluate.baselines import baseline_encoder
from mocolab.evaluate.features import extract_layers
from mocolab.evaluate.lowshot import low_shot_protocol, low_shot_sample
from mocolab.evaluate.svm import (
    COSTS,
    average_precision,
    basis,
    cost_path,
    fit_svms,
    normalize_rows,
    sample_costs,
    solve,
    svm_protocol,
    voc_ap,
)


def test_costs_are_the_19_of_the_protocol():
    assert len(COSTS) == 19 and COSTS[:3] == (1.0, 10.0, 100.0)
    assert COSTS[3] == 0.5**4 and COSTS[-1] == 0.5**19


def test_voc_ap_hand_made_cases():
    assert voc_ap([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(100.0)
    assert voc_ap([0.9, 0.8, 0.1], [0, 0, 1]) == pytest.approx(100 / 3)
    # ranks: +, -, +  -> precision 1 at recall 0.5, 2/3 at recall 1: AP = 0.5 * 1 + 0.5 * 2/3
    assert voc_ap([3, 2, 1], [1, 0, 1]) == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    # the envelope: -, +, +  -> precision 1/2 at r=.5, 2/3 at r=1; envelope lifts the first to 2/3
    assert voc_ap([3, 2, 1], [0, 1, 1]) == pytest.approx(100 * 2 / 3)
    # a difficult image (-1) is left out, wherever it ranks
    assert voc_ap([5, 3, 2, 1], [-1, 1, 0, 1]) == pytest.approx(voc_ap([3, 2, 1], [1, 0, 1]))
    with pytest.raises(ValueError, match="no positive"):
        voc_ap([1, 2], [0, -1])


def test_batched_solver_reaches_liblinears_optimum():
    from sklearn.svm import LinearSVC

    torch.manual_seed(0)
    x = normalize_rows(torch.randn(200, 16) + 0.5)
    y = torch.where(x[:, 0] + 0.2 * torch.randn(200, dtype=torch.float64) > 0.05, 1.0, -1.0)
    costs = (0.5**10, 1.0, 100.0)
    w = fit_svms(x, y[:, None].repeat(1, 3), torch.stack([sample_costs(y, c) for c in costs], 1))
    for j, cost in enumerate(costs):
        ref = LinearSVC(C=cost, class_weight={1: 2, -1: 1}, dual=True, tol=1e-9, max_iter=200_000).fit(x, y)
        assert torch.allclose(w[:-1, j], torch.as_tensor(ref.coef_[0]), atol=1e-4)
        assert w[-1, j].item() == pytest.approx(ref.intercept_[0], abs=1e-4)


@pytest.fixture(scope="module")
def cifar_features(cifar10_root):
    """avgpool features of a random-init ResNet-18 (CIFAR stem) on 600 train and 300 test images."""
    encoder, _ = baseline_encoder("random", "resnet18", cifar_stem=True)
    transform = augment.eval_transform(32, *augment.normalisation("cifar"))
    out = []
    for split, n in (("train", 600), ("test", 300)):
        ds = seeded_subset(load_split("imagefolder", cifar10_root, split, transform), n, 1)
        feats, labels = extract_layers(encoder, DataLoader(ds, batch_size=100), ("avgpool",), progress=False)
        out += [feats["avgpool"], torch.nn.functional.one_hot(labels, 10)]
    return out


# Every third cost of the protocol's grid, and 10: LinearSVC is here only the reference, and its slowest
# fits are at C = 100 (50 of the 64 s of the full grid); test_batched_solver_reaches_liblinears_optimum pins
# the solver to liblinear's optimum at 100 itself.
REFERENCE_COSTS = COSTS[1:2] + COSTS[3::3]


def test_batched_solver_matches_linearsvc_protocol_on_cifar10(cifar_features):
    train_x, train_t, test_x, test_t = cifar_features
    ours = svm_protocol(train_x, train_t, test_x, test_t, costs=REFERENCE_COSTS, solver="torch")
    ref = svm_protocol(train_x, train_t, test_x, test_t, costs=REFERENCE_COSTS, solver="sklearn")
    assert ours["cost"] == ref["cost"]  # cross-validation picks the same cost for every class
    assert np.max(np.abs(np.array(ours["ap"]) - np.array(ref["ap"]))) < 0.5, (ours["ap"], ref["ap"])
    assert abs(ours["mAP"] - ref["mAP"]) < 0.3
    assert 10 < ref["top1"] < 100 and abs(ours["top1"] - ref["top1"]) < 1.0
    assert ours["mAP"] > 15  # above chance (10% positives): random conv features carry information


def test_low_shot_samples_are_seeded_and_sized():
    targets = torch.zeros(500, 3, dtype=torch.long)
    targets[:50, 0], targets[50:60, 1], targets[60:70, 2] = 1, 1, 1
    targets[70:75, 0] = -1  # difficult: neither a positive nor a negative of a low-shot sample
    a = low_shot_sample(targets, 0, 8, sample=2, seed=0)
    assert np.array_equal(a, low_shot_sample(targets, 0, 8, sample=2, seed=0))
    assert not np.array_equal(a, low_shot_sample(targets, 0, 8, sample=3, seed=0))
    assert len(a) == 8 + 19 * 8 and len(set(a.tolist())) == len(a)
    assert (targets[a[:8], 0] == 1).all() and (targets[a[8:], 0] == 0).all()
    drawn = np.concatenate([low_shot_sample(targets, 0, 20, sample=s, seed=0) for s in range(20)])
    assert not set(range(70, 75)) & set(drawn.tolist())  # 400 draws of 380 negatives each: never a difficult one
    with pytest.raises(ValueError, match="class 'dog' has only 10 positive"):
        low_shot_sample(targets, 1, 16, sample=0, class_name="dog")


def test_low_shot_protocol_reports_both_cost_choices(cifar_features):
    train_x, train_t, test_x, test_t = cifar_features
    result = low_shot_protocol(train_x, train_t, test_x, test_t, ks=(1, 2), samples=2, costs=COSTS[:4])
    one, two = result["by_k"][1], result["by_k"][2]
    assert "cost_picked_by_cv" not in one  # CV inside a sample needs two positives
    for block in (one["cost_picked_on_test"], two["cost_picked_on_test"], two["cost_picked_by_cv"]):
        assert block["min"] <= block["mean"] <= block["max"] and len(block["per_sample"]) == 2
    assert two["cost_picked_on_test"]["cost"] in COSTS[:4]


def test_row_space_reduction_solves_the_same_problem_when_dimensions_exceed_samples():
    torch.manual_seed(1)
    x = normalize_rows(torch.randn(60, 300))
    y = torch.where(torch.randn(60) > 0, 1.0, -1.0).double()[:, None].repeat(1, 3)
    c = torch.stack([sample_costs(y[:, 0], cost) for cost in (0.01, 1.0, 100.0)], 1)
    reduced = fit_svms(x, y, c)  # 301 > 60: solved in the 60-dim row space
    direct = solve(torch.cat([x, torch.ones(60, 1, dtype=x.dtype)], 1), y, c, 1e-10)  # on x1 itself, 301-dim
    assert torch.allclose(reduced, direct, atol=1e-5)
    b = basis(x)
    assert torch.allclose(b.to_w.T @ b.to_w, torch.eye(b.z.shape[1], dtype=x.dtype), atol=1e-8)  # |w| = |u|


def test_average_precision_equals_scikit_learns_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 60))
        scores = rng.integers(0, 6, n) / 5 if trial % 2 else rng.normal(size=n)  # even trials: no ties
        positives = rng.random(n) < rng.uniform(0.05, 0.9)
        if not positives.any():
            positives[0] = True
        assert average_precision(scores, positives) == pytest.approx(100 * average_precision_score(positives, scores))


def test_the_cost_path_reaches_liblinears_optimum_at_every_cost_of_the_grid():
    """Warm-started from the cost below, every one of the 19 costs (C = 100 included) converges to the
    optimum LinearSVC reaches at tol 1e-9, for a cross-validation fold's columns (held-out images at cost 0)."""
    from sklearn.svm import LinearSVC

    torch.manual_seed(2)
    x = normalize_rows(torch.randn(150, 40) + 0.3)
    y = torch.where(x[:, :2].sum(1) + 0.3 * torch.randn(150, dtype=torch.float64) > 0.3, 1.0, -1.0)
    keep = torch.ones(150, dtype=torch.float64)
    keep[:50] = 0  # a held-out fold
    b = basis(x)
    weights = torch.stack([sample_costs(y, 1.0), sample_costs(y, 1.0) * keep], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a problem stopped short of tol would warn
        u = cost_path(b.z, y[:, None].repeat(1, 2), weights, COSTS)
    for ci, cost in enumerate(COSTS):
        for col, rows in ((0, slice(None)), (1, slice(50, None))):
            w = b.weights(u[ci])[:, col]
            ref = LinearSVC(C=cost, class_weight={1: 2, -1: 1}, dual=True, tol=1e-10, max_iter=1_000_000)
            ref.fit(x[rows], y[rows])
            scale = max(1.0, float(np.abs(ref.coef_).max()))
            assert torch.allclose(w[:-1], torch.as_tensor(ref.coef_[0]), atol=1e-4 * scale), (cost, col)
            assert w[-1].item() == pytest.approx(ref.intercept_[0], abs=1e-4 * scale), (cost, col)
        cold = solve(b.z, y[:, None].repeat(1, 2), cost * weights, 1e-6)  # warm and cold: one optimum
        assert torch.allclose(u[ci], cold, atol=1e-5 * max(1.0, float(cold.abs().max())))


def test_the_protocol_converges_at_every_cost_on_real_features(cifar_features):
    """The earlier solver stopped at its 50-step Newton cap at C = 100 (it warned); every column of the CV
    path must now reach tol, and the gradient there is checked directly."""
    train_x, train_t, _, _ = cifar_features
    x = normalize_rows(train_x)
    y = torch.where(train_t == 1, 1.0, -1.0).double()
    b = basis(x)
    weights = sample_costs(y, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u = cost_path(b.z, y, weights, COSTS)
    g0 = (2 * b.z.T @ (100.0 * weights * y)).norm(dim=0)
    f = b.z @ u[COSTS.index(100.0)]
    grad = u[COSTS.index(100.0)] - 2 * b.z.T @ (100.0 * weights * (y * f < 1) * (y - f))
    assert (grad.norm(dim=0) <= 1e-6 * g0).all()


def test_the_best_layer_is_a_feat_layer_as_the_reference_picks_it():
    """MMSelfSup 0.x's low-shot benchmark runs on the best of feat1-5: avgpool is reported, never chosen."""
    from mocolab.evaluate.benchmarks import best_layer

    by_layer = {"feat3": {"mAP": 40.0}, "feat5": {"mAP": 42.0}, "avgpool": {"mAP": 45.0}}
    assert best_layer(by_layer) == "feat5"
    assert best_layer({"avgpool": {"mAP": 45.0}}) == "avgpool"  # no feat layer measured: the one there is


def test_low_shot_with_the_batched_solver_equals_linearsvc(cifar_features):
    """Every class's samples solved at once along the cost path give LinearSVC's test APs and CV APs."""
    train_x, train_t, test_x, test_t = cifar_features
    args = dict(ks=(1, 4), samples=2, costs=(COSTS[1], COSTS[0], COSTS[8]))
    ours = low_shot_protocol(train_x, train_t, test_x, test_t, solver="torch", **args)
    ref = low_shot_protocol(train_x, train_t, test_x, test_t, solver="sklearn", **args)
    for k in (1, 4):
        for choice in ("cost_picked_on_test", "cost_picked_by_cv") if k > 1 else ("cost_picked_on_test",):
            got, want = ours["by_k"][k][choice], ref["by_k"][k][choice]
            assert np.allclose(got["per_sample"], want["per_sample"], atol=0.05), (k, choice, got, want)
