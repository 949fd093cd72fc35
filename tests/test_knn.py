"""Weighted kNN against a brute-force loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from mocolab.evaluate import knn_accuracy, knn_scores


def brute_force_scores(test_f, bank_f, bank_y, num_classes, k, T):
    test_f, bank_f = F.normalize(test_f, dim=1), F.normalize(bank_f, dim=1)
    scores = torch.zeros(len(test_f), num_classes)
    for i in range(len(test_f)):
        sims = [(float(test_f[i] @ bank_f[j]), j) for j in range(len(bank_f))]
        for sim, j in sorted(sims, reverse=True)[:k]:
            scores[i, bank_y[j]] += math.exp(sim / T)
    return scores


def test_knn_scores_match_brute_force_for_every_k_and_chunking():
    bank_f, bank_y = torch.randn(300, 16), torch.randint(0, 7, (300,))
    test_f = torch.randn(50, 16)
    result = knn_scores(test_f, bank_f, bank_y, 7, ks=(10, 20, 100, 200), T=0.07, chunk_size=13)
    for k in (10, 20, 100, 200):
        expected = brute_force_scores(test_f, bank_f, bank_y, 7, k, 0.07)
        assert torch.allclose(result[k], expected, rtol=1e-4)
        assert torch.equal(result[k].argmax(1), expected.argmax(1))


def test_knn_accuracy_top1_top5():
    bank_f = F.normalize(torch.randn(200, 8), dim=1)
    bank_y = torch.randint(0, 10, (200,))
    test_f = bank_f[:40] + 0.01 * torch.randn(40, 8)  # each test point sits on a bank point
    acc = knn_accuracy(test_f, bank_y[:40], bank_f, bank_y, 10, ks=(1, 200), T=0.07)
    assert acc[1]["top1"] == 100.0
    expected = brute_force_scores(test_f, bank_f, bank_y, 10, 200, 0.07)
    top1 = 100.0 * (expected.argmax(1) == bank_y[:40]).float().mean().item()
    top5 = 100.0 * (expected.topk(5, dim=1).indices == bank_y[:40, None]).any(1).float().mean().item()
    assert abs(acc[200]["top1"] - top1) < 1e-6 and abs(acc[200]["top5"] - top5) < 1e-6


def test_top5_breaks_ties_among_unvoted_classes_by_class_index():
    """At k = 2 of 10 classes, eight classes have no vote (score 0) and three of them fill the top 5. The rank of
    the true class, counted from the definition: the classes scoring more, plus the tied ones of lower index
    (the reference's sort on a CPU). Test images whose true class got no vote are top-5 hits exactly when few
    enough lower-indexed classes share its zero."""
    torch.manual_seed(0)
    bank_f, bank_y = F.normalize(torch.randn(60, 8), dim=1), torch.randint(0, 10, (60,))
    test_f, test_y = torch.randn(300, 8), torch.randint(0, 10, (300,))
    k = 2
    scores = brute_force_scores(test_f, bank_f, bank_y, 10, k, 0.07)
    hits = 0
    for s, y in zip(scores.tolist(), test_y.tolist()):
        rank = sum(1 for c, v in enumerate(s) if v > s[y] or (v == s[y] and c < y))
        hits += rank < 5
    unvoted = (scores.gather(1, test_y[:, None]) == 0).float().mean().item()
    assert unvoted > 0.5  # most true classes tie at zero: the tie order decides top-5
    acc = knn_accuracy(test_f, test_y, bank_f, bank_y, 10, ks=(k,), T=0.07)[k]
    assert acc["top5"] == pytest.approx(100.0 * hits / 300, abs=1e-4)
