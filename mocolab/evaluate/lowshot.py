"""Low-shot linear SVMs (docs/protocols.md section 2, "Low-shot VOC07 SVM").

For k in {1, 2, 4, 8, 16, 32, 64, 96} and 5 seeded samples per k: for each
class, k positives and 19k negatives drawn from the training set (negatives
are images labelled absent, 0; difficult-only images are never drawn, as in
the reference benchmark's sampling script; the rest is ignored for that
class), the SVM of the VOC07 protocol at each of its 19 costs, VOC AP on the
test set. Two ways to pick the cost, reported side by side:

- "test": per k, the cost with the best mean test mAP over the samples, as the
  reference does (optimistic: the cost is chosen on test data);
- "cv": per class and sample, the cost with the best cross-validated AP inside
  the sample (3 folds, fewer when k < 3; not defined for k = 1).
"""

from __future__ import annotations

import numpy as np
import torch

from ..reference import LOW_SHOT_KS
from ..run.seeding import derive_seed
from .svm import (
    COSTS,
    Basis,
    average_precision,
    basis,
    cost_path,
    cv_folds,
    normalize_rows,
    sample_costs,
    sklearn_svm_scores,
    svm_labels,
    voc_ap,
)


def low_shot_sample(targets: torch.Tensor, cls: int, k: int, sample: int, seed: int = 0, class_name=None):
    """Training indices of one sample for one class: k positives then 19k negatives, seeded."""
    column = torch.as_tensor(targets)[:, cls].numpy()
    positives, negatives = np.flatnonzero(column == 1), np.flatnonzero(column == 0)  # difficult (-1): neither
    name = class_name if class_name is not None else cls
    if len(positives) < k:
        raise ValueError(
            f"low-shot k={k}: class {name!r} has only {len(positives)} positive training "
            f"image(s); lower k or use more training data"
        )
    if len(negatives) < 19 * k:
        raise ValueError(
            f"low-shot k={k}: class {name!r} has only {len(negatives)} negatives, fewer than 19k = {19 * k}"
        )
    rng = np.random.default_rng(derive_seed(seed, "low-shot sample", k, sample, cls))
    return np.concatenate([rng.choice(positives, k, replace=False), rng.choice(negatives, 19 * k, replace=False)])


def _path_scores(b: Basis | None, x, y, groups, costs, score_on, solver: str) -> np.ndarray:
    """Decision values on `score_on` of one SVM per (group, cost): columns ordered group-major.

    groups: (class, training indices into x / y) pairs: one sample of a class, or one sample's CV training
    part. On the torch solver the SVMs of all groups are solved at once along the cost path, in the basis of
    all training images (b) restricted to the rows the groups use; score_on is then in b's coordinates.
    """
    if solver == "sklearn":
        return np.stack(
            [sklearn_svm_scores(x[idx], y[idx, j], cost, score_on) for j, idx in groups for cost in costs], 1
        )
    rows = np.unique(np.concatenate([idx for _, idx in groups]))
    member = torch.zeros(len(rows), len(groups), dtype=torch.float64)
    for g, (_, idx) in enumerate(groups):
        member[torch.as_tensor(np.searchsorted(rows, idx)), g] = 1
    index = torch.as_tensor(rows, device=b.z.device)
    labels = y[torch.as_tensor(rows)][:, torch.as_tensor([j for j, _ in groups])]  # rows x groups
    weights = sample_costs(labels, 1.0) * member
    gram = b.gram[index][:, index] if b.gram is not None else None
    u = cost_path(b.z[index], labels.to(b.z.device), weights.to(b.z.device), costs, gram=gram)
    scores = (score_on @ u).cpu().numpy()  # costs x images x groups
    return scores.transpose(1, 2, 0).reshape(len(score_on), len(groups) * len(costs))


def low_shot_protocol(
    train_x,
    train_targets,
    test_x,
    test_targets,
    ks=LOW_SHOT_KS,
    samples: int = 5,
    seed: int = 0,
    costs=COSTS,
    solver: str = "torch",
    device=None,
    class_names=None,
) -> dict:
    """mAP statistics over samples for every k, with the cost picked on test and by CV in the sample."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_x, test_x = normalize_rows(train_x), normalize_rows(test_x)
    train_targets, test_targets = torch.as_tensor(train_targets), torch.as_tensor(test_targets)
    y = svm_labels(train_targets)
    classes = y.shape[1]
    # One basis for every sample of every class and k; the test images in its coordinates.
    b = basis(train_x.to(device)) if solver == "torch" else None
    test_on = b.project(test_x.to(device)) if b is not None else test_x
    names = list(class_names) if class_names is not None else list(range(classes))
    result = {}
    for k in ks:  # every class's samples at once: one cost path for the test APs, one for the CV
        draws = [
            [low_shot_sample(train_targets, j, k, s, seed, names[j]) for s in range(samples)] for j in range(classes)
        ]
        scores = _path_scores(
            b, train_x, y, [(j, idx) for j in range(classes) for idx in draws[j]], costs, test_on, solver
        )
        test_ap = np.zeros((samples, classes, len(costs)))
        for j in range(classes):
            for s in range(samples):
                for ci in range(len(costs)):
                    column = (j * samples + s) * len(costs) + ci
                    test_ap[s, j, ci] = voc_ap(scores[:, column], test_targets[:, j].numpy())
        cv_ap = np.full((samples, classes, len(costs)), np.nan)
        if k >= 2:
            cv_ap = _cv_inside_samples(b, train_x, y, draws, min(3, k), costs, solver)
        result[k] = _summarise(test_ap, cv_ap, costs)
    return {"ks": list(ks), "samples": samples, "seed": seed, "by_k": result}


def _cv_inside_samples(b, x, y, draws, folds, costs, solver) -> np.ndarray:
    """Mean held-out AP per sample, class and cost (samples x classes x costs), by stratified folds inside
    each sample; draws[j][s]: the training indices of class j's sample s."""
    groups, held_out = [], []
    for j, class_draws in enumerate(draws):
        for s, idx in enumerate(class_draws):
            for held in cv_folds((y[idx, j] > 0).numpy(), folds):
                groups.append((j, np.delete(idx, held)))
                held_out.append((j, s, idx[held]))
    scores = _path_scores(b, x, y, groups, costs, b.z if b is not None else x, solver)
    ap = np.zeros((len(draws[0]), len(draws), len(costs)))
    for g, (j, s, held) in enumerate(held_out):
        for ci in range(len(costs)):
            ap[s, j, ci] += average_precision(scores[held, g * len(costs) + ci], y[held, j] > 0) / folds
    return ap


def _summarise(test_ap: np.ndarray, cv_ap: np.ndarray, costs) -> dict:
    """test_ap, cv_ap: samples x classes x costs."""

    def stats(per_sample):
        return {
            "mean": float(np.mean(per_sample)),
            "min": float(np.min(per_sample)),
            "max": float(np.max(per_sample)),
            "std": float(np.std(per_sample)),
            "per_sample": [float(v) for v in per_sample],
        }

    sample_map = test_ap.mean(axis=1)  # samples x costs
    best = int(sample_map.mean(axis=0).argmax())
    out = {"cost_picked_on_test": {**stats(sample_map[:, best]), "cost": costs[best]}}
    if not np.isnan(cv_ap).all():
        chosen = cv_ap.argmax(axis=2)  # samples x classes
        picked = np.take_along_axis(test_ap, chosen[..., None], axis=2)[..., 0]
        out["cost_picked_by_cv"] = stats(picked.mean(axis=1))
    return out
