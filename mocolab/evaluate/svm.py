"""Linear SVMs on frozen features: the VOC07 protocol, batched.

docs/protocols.md section 2, "VOC07 SVM": rows divided by (L2 norm + 1e-5) in
float64; per class a binary linear SVM (L2 penalty, squared hinge, class
weights 2:1, bias regularised as in liblinear); the cost picked per class from
19 values by mean 3-fold cross-validated average precision on trainval;
refit; VOC AP on test with difficult images excluded.

The reference fits scikit-learn's LinearSVC once per class, cost and fold
(`solver="sklearn"`, kept for comparison). `fit_svms` minimises the same
objective for every class, cost and fold at once by Newton's method with
conjugate gradients, a few large matrix products per iteration, on the GPU
when given one.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

COSTS = (1.0, 10.0, 100.0) + tuple(0.5**i for i in range(4, 20))  # 19 costs
POS_WEIGHT = 2.0  # class weights {positive: 2, negative: 1}


def normalize_rows(x) -> torch.Tensor:
    """float64 rows divided by (their L2 norm + 1e-5), as the benchmark does."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / (x.norm(dim=1, keepdim=True) + 1e-5)


# ----------------------------------------------------------------------------
# Average precision
# ----------------------------------------------------------------------------


def voc_ap(scores, targets) -> float:
    """VOC AP in percent: area under the interpolated precision envelope at every recall change.

    targets: 1 positive, 0 negative, -1 difficult (left out).
    """
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    keep = targets != -1
    scores, targets = scores[keep], targets[keep]
    npos = int((targets == 1).sum())
    if npos == 0:
        raise ValueError("AP is undefined for a class with no positive test image")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(targets[order] == 1)
    fp = np.cumsum(targets[order] != 1)
    recall = np.concatenate([[0.0], tp / npos, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
    change = np.where(recall[1:] != recall[:-1])[0]
    return 100.0 * float(np.sum((recall[change + 1] - recall[change]) * precision[change + 1]))


def average_precision(scores, positives) -> float:
    """scikit-learn's (non-interpolated) average precision, the reference's CV score; in percent."""
    from sklearn.metrics import average_precision_score

    return 100.0 * float(average_precision_score(np.asarray(positives), np.asarray(scores)))


# ----------------------------------------------------------------------------
# The batched solver
# ----------------------------------------------------------------------------


def fit_svms(
    x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, tol: float = 1e-6, max_newton: int = 50, max_cg: int = 200
) -> torch.Tensor:
    """Solve P squared-hinge SVMs on one feature matrix at once.

    x: N x D features; y: N x P labels in {+1, -1}; c: N x P per-sample costs
    (cost x class weight; 0 leaves a sample out of that problem, e.g. a held-out
    fold). Minimises, for each column p,
        0.5 * |w_p|^2 + sum_i c_ip * max(0, 1 - y_ip * (x_i . w_p + b_p))^2
    with the bias b_p regularised like a weight (liblinear's intercept_scaling=1).
    Returns W: (D+1) x P, the last row being the biases.
    """
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)  # N x (D+1)
    if x1.shape[1] > x1.shape[0]:
        # More dimensions than samples: the objective sees w only through x1 @ w and |w|^2, so
        # with x1 = U S V^T the optimum lies in the row space, w = V z, and solving for z on
        # the N x r features U S is the same problem, exactly, at a fraction of the cost.
        u, s, vh = torch.linalg.svd(x1, full_matrices=False)
        return vh.T @ _newton(u * s, y, c, tol, max_newton, max_cg)
    return _newton(x1, y, c, tol, max_newton, max_cg)


def _newton(x1: torch.Tensor, y: torch.Tensor, c: torch.Tensor, tol: float, max_newton: int, max_cg: int):
    """Truncated Newton (TRON-like) on the primal, every column at once; x1 includes the bias column."""
    w = torch.zeros(x1.shape[1], y.shape[1], dtype=x1.dtype, device=x1.device)  # (D+1) x P

    def objective(w):
        slack = (1 - y * (x1 @ w)).clamp(min=0)  # N x P
        return 0.5 * (w * w).sum(0) + (c * slack * slack).sum(0)

    g0 = None
    for _ in range(max_newton):
        margin = y * (x1 @ w)
        active = c * (margin < 1)  # N x P: the samples inside the margin, weighted
        grad = w - 2 * x1.T @ (active * (1 - margin) * y)  # (D+1) x P
        gnorm = grad.norm(dim=0)
        g0 = gnorm if g0 is None else g0
        todo = gnorm > tol * g0
        if not todo.any():
            break
        step = _conjugate_gradient(lambda v: v + 2 * x1.T @ (active * (x1 @ v)), -grad * todo, max_cg)
        # Backtracking (Armijo) per column: the objective is only piecewise quadratic.
        f0, slope, t = objective(w), (grad * step).sum(0), torch.ones_like(gnorm)
        for _ in range(30):
            bad = objective(w + step * t) > f0 + 0.01 * t * slope
            if not bad.any():
                break
            t = torch.where(bad, t / 2, t)
        w = w + step * t
    else:
        warnings.warn(
            f"fit_svms: {int(todo.sum())} of {len(todo)} problems stopped after {max_newton} "
            f"Newton steps before reaching tol={tol}",
            stacklevel=3,
        )
    return w


def _conjugate_gradient(hvp, b: torch.Tensor, max_iter: int, rtol: float = 0.1) -> torch.Tensor:
    """Approximately solve H d = b column by column (H: a batch of SPD matrices given by hvp).

    Truncated Newton: a relative residual of 0.1 suffices far from the optimum and
    shrinks with the gradient near it (b is the gradient), as in liblinear's TRON.
    """
    d = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = (r * r).sum(0)
    target = (rtol * b.norm(dim=0)) ** 2
    for _ in range(max_iter):
        if bool((rs <= target).all()):
            break
        hp = hvp(p)
        alpha = torch.where(rs > target, rs / (p * hp).sum(0).clamp(min=1e-300), torch.zeros_like(rs))
        d += alpha * p
        r -= alpha * hp
        rs_new = (r * r).sum(0)
        p = r + (rs_new / rs.clamp(min=1e-300)) * p
        rs = rs_new
    return d


# ----------------------------------------------------------------------------
# The protocol: cost by cross-validation, refit, test
# ----------------------------------------------------------------------------


def svm_labels(targets: torch.Tensor) -> torch.Tensor:
    """+1 for present, -1 otherwise: training treats difficult images as negatives."""
    return torch.where(torch.as_tensor(targets) == 1, 1.0, -1.0).double()


def sample_costs(y: torch.Tensor, cost: float) -> torch.Tensor:
    return cost * torch.where(y > 0, POS_WEIGHT, 1.0).double()


def cv_folds(positives: np.ndarray, folds: int = 3) -> list[np.ndarray]:
    """Held-out indices of each fold: scikit-learn's StratifiedKFold, as cross_val_score(cv=3) uses."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds)
    return [test for _, test in splitter.split(np.zeros(len(positives)), positives)]


def sklearn_svm_scores(x_train, y_train, cost: float, x_eval, max_iter: int = 50_000) -> np.ndarray:
    """The reference: one LinearSVC (L2, squared hinge, class weights 2:1) and its decision values.

    The benchmark's scripts cap liblinear at 2,000 iterations, where the largest
    costs stop short of the optimum (a ConvergenceWarning); the cap here is high
    enough for the reference to be the solution of the objective it states.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    clf = LinearSVC(
        C=cost,
        class_weight={1: POS_WEIGHT, -1: 1.0},
        penalty="l2",
        loss="squared_hinge",
        dual=True,
        max_iter=max_iter,
        tol=1e-4,
        intercept_scaling=1.0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(np.asarray(x_train), np.asarray(y_train))
    if caught:
        warnings.warn(f"LinearSVC (C={cost}) stopped at max_iter={max_iter} before converging", stacklevel=2)
    return clf.decision_function(np.asarray(x_eval))


def cross_validated_ap(
    x: torch.Tensor, targets: torch.Tensor, costs=COSTS, folds: int = 3, solver: str = "torch", device=None
) -> np.ndarray:
    """Mean held-out average precision (%) per class and cost: classes x costs."""
    y = svm_labels(targets)  # N x classes
    n, classes = y.shape
    fold_sets = [cv_folds((y[:, j] > 0).numpy(), folds) for j in range(classes)]
    ap = np.zeros((classes, len(costs)))
    if solver == "sklearn":
        for j in range(classes):
            for ci, cost in enumerate(costs):
                for held in fold_sets[j]:
                    train = np.setdiff1d(np.arange(n), held)
                    scores = sklearn_svm_scores(x[train], y[train, j], cost, x[held])
                    ap[j, ci] += average_precision(scores, y[held, j] > 0) / folds
        return ap
    if solver != "torch":
        raise ValueError(f"unknown solver {solver!r}; choose 'torch' or 'sklearn'")
    # One column per (fold, class, cost); a held-out sample gets cost 0 in its fold's columns.
    cols_y, cols_c = [], []
    for f in range(folds):
        for j in range(classes):
            keep = torch.ones(n, dtype=torch.float64)
            keep[torch.as_tensor(fold_sets[j][f])] = 0
            for cost in costs:
                cols_y.append(y[:, j])
                cols_c.append(sample_costs(y[:, j], cost) * keep)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    w = fit_svms(x.to(device), torch.stack(cols_y, 1).to(device), torch.stack(cols_c, 1).to(device))
    scores = (x.to(device) @ w[:-1] + w[-1]).cpu().numpy()  # N x columns
    col = 0
    for f in range(folds):
        for j in range(classes):
            held = fold_sets[j][f]
            for ci in range(len(costs)):
                ap[j, ci] += average_precision(scores[held, col], y[held, j] > 0) / folds
                col += 1
    return ap


def fit_and_score(x_train, targets_train, chosen_costs, x_test, solver: str = "torch", device=None) -> np.ndarray:
    """Refit every class at its chosen cost on all training data; decision values on x_test (N x classes)."""
    y = svm_labels(targets_train)
    if solver == "sklearn":
        return np.stack(
            [sklearn_svm_scores(x_train, y[:, j], chosen_costs[j], x_test) for j in range(y.shape[1])], axis=1
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    c = torch.stack([sample_costs(y[:, j], chosen_costs[j]) for j in range(y.shape[1])], 1)
    w = fit_svms(x_train.to(device), y.to(device), c.to(device))
    return (x_test.to(device) @ w[:-1] + w[-1]).cpu().numpy()


def svm_protocol(
    train_x,
    train_targets,
    test_x,
    test_targets,
    costs=COSTS,
    folds: int = 3,
    solver: str = "torch",
    device=None,
    class_names=None,
) -> dict:
    """The VOC07 SVM protocol on one layer's features.

    targets: N x classes with 1 / 0 / -1 (difficult). Returns per-class AP and
    chosen cost, the mAP, the cross-validation table, and top-1 when every test
    image has exactly one positive class (one-vs-rest on CIFAR-10, say).
    """
    train_x, test_x = normalize_rows(train_x), normalize_rows(test_x)
    train_targets, test_targets = torch.as_tensor(train_targets), torch.as_tensor(test_targets)
    cv = cross_validated_ap(train_x, train_targets, costs, folds, solver, device)
    chosen = [costs[i] for i in cv.argmax(axis=1)]  # the first of equally good costs, in list order
    scores = fit_and_score(train_x, train_targets, chosen, test_x, solver, device)
    ap = [voc_ap(scores[:, j], test_targets[:, j].numpy()) for j in range(scores.shape[1])]
    result = {
        "ap": ap,
        "mAP": float(np.mean(ap)),
        "cost": chosen,
        "cv_ap": cv.tolist(),
        "classes": list(class_names) if class_names is not None else list(range(len(ap))),
    }
    single_label = bool(((test_targets == 1).sum(1) == 1).all())
    if single_label:
        truth = (test_targets == 1).float().argmax(1).numpy()
        result["top1"] = 100.0 * float((scores.argmax(1) == truth).mean())
    return result
