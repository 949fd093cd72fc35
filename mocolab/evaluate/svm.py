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
from typing import NamedTuple

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
    """Average precision in percent as scikit-learn's average_precision_score defines it (the reference's CV
    score): the sum over score thresholds, tied scores being one threshold, of (recall gained) x precision.
    Computed here in NumPy: the protocol needs it for every class, cost and fold (1,140 per layer on VOC07).
    """
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    npos = int(positives.sum())
    if npos == 0:
        return 0.0  # scikit-learn's value (with a warning) when no image is positive
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positives[order])
    last = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]  # the last image of each tied score
    tp = tp[last]
    precision, recall = tp / (last + 1), tp / npos
    return 100.0 * float(np.sum(np.diff(recall, prepend=0.0) * precision))


# ----------------------------------------------------------------------------
# The batched solver
# ----------------------------------------------------------------------------


class Basis(NamedTuple):
    """Coordinates in which the SVMs of one feature matrix are solved.

    With x1 = [x, 1] (the bias a weight like the others), every w the objective can prefer is w = to_w @ u,
    with x1 @ w = z @ u and |w| = |u|: the same problem in u on the N x r features z, whose columns are
    orthogonal (z^T z diagonal, the eigenvalues of x1's Gram matrix), so that the Hessian is nearly diagonal
    and its diagonal a good preconditioner. r = min(N, D + 1): with more dimensions than images (VOC07's
    5,011 images of 9,216 dimensions) the optimum lies in x1's row space, and z is N x N.
    """

    z: torch.Tensor  # N x r
    to_w: torch.Tensor  # (D+1) x r
    gram: torch.Tensor | None = None  # z @ z.T (N x N), kept when r = N: the exact Newton steps read it

    def weights(self, u: torch.Tensor) -> torch.Tensor:
        """W, (D+1) x P with the biases in the last row, of the solutions u (r x P)."""
        return self.to_w @ u

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Other images (test images, say) in these coordinates: their decision values are project(x) @ u."""
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1) @ self.to_w


def basis(x: torch.Tensor) -> Basis:
    """The Basis of features x (N x D, float64), from the eigenvectors of the smaller Gram matrix."""
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    rows = x1.shape[1] > x1.shape[0]
    gram = x1 @ x1.T if rows else x1.T @ x1
    lam, vectors = torch.linalg.eigh(gram)
    keep = lam > lam.max() * 1e-12  # directions x1 does not span carry no information (duplicate images)
    lam, vectors = lam[keep], vectors[:, keep]
    if rows:  # x1 = q sqrt(lam) v^T: z = q sqrt(lam), w = v u with v = x1^T q / sqrt(lam)
        return Basis(vectors * lam.sqrt(), x1.T @ (vectors / lam.sqrt()), gram)
    return Basis(x1 @ vectors, vectors)


def fit_svms(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Solve P squared-hinge SVMs on one feature matrix at once.

    x: N x D features; y: N x P labels in {+1, -1}; c: N x P per-sample costs
    (cost x class weight; 0 leaves a sample out of that problem, e.g. a held-out
    fold). Minimises, for each column p,
        0.5 * |w_p|^2 + sum_i c_ip * max(0, 1 - y_ip * (x_i . w_p + b_p))^2
    with the bias b_p regularised like a weight (liblinear's intercept_scaling=1).
    Returns W: (D+1) x P, the last row being the biases.
    """
    b = basis(x)
    return b.weights(solve(b.z, y, c, tol, gram=b.gram))


def cost_path(
    z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, costs, tol: float = 1e-6, gram: torch.Tensor | None = None
) -> torch.Tensor:
    """The solutions u (r x P) for every cost: costs x r x P, with c = cost * weights (N x P); gram: z @ z.T.

    Solved from the smallest cost up, each started from the solution of the one before (scaled by the ratio of
    the costs where that is the better start: at small costs the solution grows in proportion to the cost), so
    most problems begin a few Newton steps from their optimum.
    """
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    out = torch.empty(len(costs), z.shape[1], y.shape[1], dtype=z.dtype, device=z.device)
    u, previous = None, None
    exact = torch.zeros(y.shape[1], dtype=torch.bool, device=z.device)  # columns CG no longer serves
    for i in order:
        c = costs[i] * weights
        if u is not None:
            scaled = u * (costs[i] / previous)
            better = _objective(z @ scaled, scaled, y, c) < _objective(z @ u, u, y, c)
            u = torch.where(better, scaled, u)
        u = solve(z, y, c, tol, start=u, gram=gram, exact=exact)
        out[i], previous = u, costs[i]
    return out


def _objective(f: torch.Tensor, u: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per column: 0.5 |u|^2 + sum_i c_i max(0, 1 - y_i f_i)^2, with f = z @ u."""
    slack = (1 - y * f).clamp(min=0)
    return 0.5 * (u * u).sum(0) + (c * slack * slack).sum(0)


def solve(
    z: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    tol: float = 1e-6,
    start: torch.Tensor | None = None,
    max_newton: int = 100,
    gram: torch.Tensor | None = None,
    exact: torch.Tensor | None = None,
) -> torch.Tensor:
    """min_u 0.5 |u|^2 + sum_i c_ip max(0, 1 - y_ip (z_i . u_p))^2 for every column p: u, r x P.

    Newton's method on the piecewise quadratic objective: each step solves the Newton system
    (I + 2 z^T diag(c on the margin violators) z) d = -g by conjugate gradients preconditioned with its
    diagonal, only far enough (residual below min(0.1, |g| / |g0|) of |g|) for superlinear convergence;
    a column whose system CG has not solved within the iterations that cost as much as the exact step
    (large costs: an ill-conditioned Hessian) gets the exact step instead (`_exact_step`), and keeps
    getting it: `exact`, one flag per column, updated here (cost_path hands it on to the next, larger
    cost). An Armijo backtracking line search keeps each step a descent. A column stops when
    |g| <= tol |g0|, g0 the gradient at u = 0 (so a warm start is judged as a cold one), and only the
    columns not yet there are iterated. One that is still not there after max_newton steps is named in a
    warning.
    """
    u = torch.zeros(z.shape[1], y.shape[1], dtype=z.dtype, device=z.device) if start is None else start.clone()
    g0 = (2 * z.T @ (c * y)).norm(dim=0)  # |gradient| at u = 0
    zz = z * z
    todo = torch.arange(y.shape[1], device=z.device)
    exact = torch.zeros(y.shape[1], dtype=torch.bool, device=z.device) if exact is None else exact
    for _ in range(max_newton):
        uu, yy, cc = u[:, todo], y[:, todo], c[:, todo]
        f = z @ uu
        active = cc * (yy * f < 1)  # N x P: the weighted margin violators
        grad = uu - 2 * z.T @ (active * (yy - f))  # (1 - y f) y = y - f, as y * y = 1
        gnorm = grad.norm(dim=0)
        left = gnorm > tol * g0[todo]
        if not left.all():
            todo, uu, yy, cc, f, active, grad, gnorm = (
                t[..., left] for t in (todo, uu, yy, cc, f, active, grad, gnorm)
            )
        if len(todo) == 0:
            return u
        forcing = torch.minimum(torch.full_like(gnorm, 0.1), gnorm / g0[todo])
        d, by_cg = torch.zeros_like(grad), torch.nonzero(~exact[todo]).flatten()
        if len(by_cg):
            a = active[:, by_cg]
            d[:, by_cg], solved = _preconditioned_cg(
                lambda v: v + 2 * z.T @ (a * (z @ v)),
                -grad[:, by_cg],
                1 + 2 * zz.T @ a,
                forcing[by_cg],
                _cg_budget(a, z.shape[1]),
            )
            exact[todo[by_cg[~solved]]] = True
        for col in torch.nonzero(exact[todo]).flatten().tolist():
            d[:, col] = _exact_step(z, active[:, col], grad[:, col], gram)
        zd = z @ d
        f0, slope, t = _objective(f, uu, yy, cc), (grad * d).sum(0), torch.ones_like(gnorm)
        for _ in range(30):  # the objective is only piecewise quadratic: a full step may overshoot
            bad = _objective(f + t * zd, uu + t * d, yy, cc) > f0 + 0.01 * t * slope
            if not bad.any():
                break
            t = torch.where(bad, t / 2, t)
        u[:, todo] = uu + t * d
    warnings.warn(
        f"fit_svms: {len(todo)} of {y.shape[1]} problems stopped after {max_newton} Newton steps before "
        f"reaching tol={tol}",
        stacklevel=3,
    )
    return u


def _exact_step(z: torch.Tensor, active: torch.Tensor, grad: torch.Tensor, gram: torch.Tensor | None) -> torch.Tensor:
    """The Newton step -H^-1 g of one column, H = I + z_A^T diag(2 c_A) z_A over its margin violators A,
    by a Cholesky factorisation: of H itself (r x r) when A has at least r images, else of the |A| x |A|
    matrix of the Woodbury identity, H^-1 = I - z_A^T (diag(1 / (2 c_A)) + z_A z_A^T)^-1 z_A (z_A z_A^T read
    from gram when given)."""
    rows = torch.nonzero(active).flatten()
    za, ca = z[rows], active[rows]
    if len(rows) >= z.shape[1]:
        h = za.T @ (2 * ca[:, None] * za)
        h.diagonal().add_(1)
        return -torch.cholesky_solve(grad[:, None], torch.linalg.cholesky(h))[:, 0]
    m = gram[rows][:, rows] if gram is not None else za @ za.T
    m.diagonal().add_(1 / (2 * ca))
    return -(grad - za.T @ torch.cholesky_solve((za @ grad)[:, None], torch.linalg.cholesky(m))[:, 0])


def _cg_budget(active: torch.Tensor, r: int) -> torch.Tensor:
    """CG iterations per column worth as much as its exact step: a CG iteration costs 2 N r multiply-adds
    (two products with z), the exact step's Cholesky factorisation k^3 / 3, k = min(|A|, r); 5 to 100."""
    k = (active > 0).sum(0).clamp(max=r).double()
    return (k**3 / (6 * active.shape[0] * r)).clamp(5, 100).long()


def _preconditioned_cg(hvp, b: torch.Tensor, diagonal: torch.Tensor, forcing: torch.Tensor, max_iter: torch.Tensor):
    """Approximately solve H d = b for each column (H symmetric positive definite, given by hvp), with the
    Jacobi preconditioner `diagonal`, until |residual| <= forcing |b|; converged columns stop moving.
    Returns d and which columns got there."""
    d = torch.zeros_like(b)
    r = b.clone()
    s = r / diagonal
    p, rs = s.clone(), (r * s).sum(0)
    target = forcing * b.norm(dim=0)
    for i in range(int(max_iter.max()) + 1):
        going = (r.norm(dim=0) > target) & (i < max_iter)
        if not going.any():
            break
        hp = hvp(p)
        alpha = torch.where(going, rs / (p * hp).sum(0).clamp(min=1e-300), torch.zeros_like(rs))
        d += alpha * p
        r -= alpha * hp
        s = r / diagonal
        rs_new = (r * s).sum(0)
        p = s + (rs_new / rs.clamp(min=1e-300)) * p
        rs = rs_new
    return d, r.norm(dim=0) <= target


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
    x: torch.Tensor,
    targets: torch.Tensor,
    costs=COSTS,
    folds: int = 3,
    solver: str = "torch",
    device=None,
    coordinates: Basis | None = None,
) -> np.ndarray:
    """Mean held-out average precision (%) per class and cost: classes x costs.

    coordinates: basis(x), when the caller has it (svm_protocol reuses it for the refit).
    """
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
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    b = coordinates if coordinates is not None else basis(x.to(device))
    # One column per (fold, class): the class weights, 0 for the fold's held-out images; every cost on the path.
    weights = sample_costs(y, 1.0).repeat(1, folds)
    for f in range(folds):
        for j in range(classes):
            weights[torch.as_tensor(fold_sets[j][f]), f * classes + j] = 0
    u = cost_path(b.z, y.repeat(1, folds).to(device), weights.to(device), costs, gram=b.gram)  # costs x r x columns
    scores = (b.z @ u).cpu().numpy()  # costs x N x columns: decision values of the training images
    positives = (y > 0).numpy()
    for f in range(folds):
        for j in range(classes):
            held = fold_sets[j][f]
            for ci in range(len(costs)):
                ap[j, ci] += average_precision(scores[ci, held, f * classes + j], positives[held, j]) / folds
    return ap


def fit_and_score(
    x_train, targets_train, chosen_costs, x_test, solver: str = "torch", device=None, coordinates: Basis | None = None
) -> np.ndarray:
    """Refit every class at its chosen cost on all training data; decision values on x_test (N x classes)."""
    y = svm_labels(targets_train)
    if solver == "sklearn":
        return np.stack(
            [sklearn_svm_scores(x_train, y[:, j], chosen_costs[j], x_test) for j in range(y.shape[1])], axis=1
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    b = coordinates if coordinates is not None else basis(x_train.to(device))
    c = sample_costs(y, 1.0) * torch.as_tensor(chosen_costs, dtype=torch.float64)
    w = b.weights(solve(b.z, y.to(device), c.to(device), gram=b.gram))
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
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    coordinates = basis(train_x.to(device)) if solver == "torch" else None  # one eigendecomposition per layer
    cv = cross_validated_ap(train_x, train_targets, costs, folds, solver, device, coordinates)
    chosen = [costs[i] for i in cv.argmax(axis=1)]  # the first of equally good costs, in list order
    scores = fit_and_score(train_x, train_targets, chosen, test_x, solver, device, coordinates)
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
