"""Weighted kNN classification of features (Wu et al. 2018; MoCo demo monitor; DINO's eval_knn).

For each test feature take the k most cosine-similar bank features; each
neighbour votes for its label with weight exp(sim / T); the class with the
largest summed weight wins (docs/protocols.md section 2, "kNN classification").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(
    test_f: torch.Tensor,
    bank_f: torch.Tensor,
    bank_y: torch.Tensor,
    num_classes: int,
    ks=(200,),
    T: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Class scores (N_test x num_classes) for every k in `ks`, from one neighbour search.

    Features are L2-normalised here, so cosine similarity is a dot product. The
    test set is processed in chunks so the N_chunk x N_bank similarity matrix fits.
    """
    ks = sorted(set(int(k) for k in ks))
    if ks[-1] > bank_f.shape[0]:
        raise ValueError(f"k={ks[-1]} exceeds the {bank_f.shape[0]} features in the bank")
    bank_f = F.normalize(bank_f.float(), dim=1)
    bank_y = bank_y.to(bank_f.device)
    scores = {k: [] for k in ks}
    for start in range(0, test_f.shape[0], chunk_size):
        f = F.normalize(test_f[start : start + chunk_size].to(bank_f.device).float(), dim=1)
        sim, idx = (f @ bank_f.T).topk(ks[-1], dim=1)  # sim, idx: B x kmax, most similar first
        weight, labels = (sim / T).exp(), bank_y[idx]  # B x kmax each
        for k in ks:
            votes = torch.zeros(f.shape[0], num_classes, device=f.device)  # votes: B x C
            scores[k].append(votes.scatter_add_(1, labels[:, :k], weight[:, :k]).cpu())
    return {k: torch.cat(v) for k, v in scores.items()}


def knn_accuracy(
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    bank_f: torch.Tensor,
    bank_y: torch.Tensor,
    num_classes: int,
    ks=(10, 20, 100, 200),
    T: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy in percent, for every k.

    Classes with equal scores (at small k, most classes have no vote at all: 0) rank by class index, lower
    first: a stable sort of the scores, on the CPU whatever the features' device. That is the order the
    reference's `probs.sort(1, True)` (MMSelfSup's knn_classifier, from DINO's eval_knn) gives on a CPU; on a GPU
    torch documents no order for ties, so the reference's own top-5 at k <= 20 can move with the device (up to
    2.3 points on CIFAR-10, issue 27). Top-1 has no such freedom unless the leading scores tie exactly."""
    result = {}
    test_y = test_y.cpu()
    for k, s in knn_scores(test_f, bank_f, bank_y, num_classes, ks, T, chunk_size).items():
        ranked = s.argsort(dim=1, descending=True, stable=True)
        result[k] = {"top1": 100.0 * (ranked[:, 0] == test_y).float().mean().item()}
        if num_classes > 5:
            result[k]["top5"] = 100.0 * (ranked[:, :5] == test_y[:, None]).any(1).float().mean().item()
    return result
