"""Embedding geometry against brute-force references and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from mocolab.evaluate import embedding as E
from mocolab.models import build_encoder


def test_alignment_and_uniformity_match_their_definitions():
    torch.manual_seed(0)
    z1, z2 = torch.randn(20, 5), torch.randn(20, 5)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    assert E.alignment(z1, z2) == pytest.approx(
        sum(((u1[i] - u2[i]) ** 2).sum().item() for i in range(20)) / 20, rel=1e-5
    )
    pairs = [math.exp(-2 * ((u1[i] - u1[j]) ** 2).sum().item()) for i in range(20) for j in range(i + 1, 20)]
    assert E.uniformity(z1) == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-5)
    assert E.alignment(z1, 3 * z1) == pytest.approx(0, abs=1e-10)  # scale does not matter, only direction


def test_uniformity_and_spread_flag_a_collapsed_embedding():
    torch.manual_seed(0)
    collapsed = torch.ones(100, 64) + 1e-4 * torch.randn(100, 64)
    spread_out = torch.randn(2000, 64)
    assert E.uniformity(collapsed) == pytest.approx(0, abs=1e-4)
    assert E.uniformity(spread_out) < -3.5  # the minimum for 64-d is about -4 (the uniform distribution's)
    assert E.spread(collapsed) < 0.01 and E.spread(spread_out) == pytest.approx(1, abs=0.05)


def test_pair_similarities_split_the_diagonal_from_the_rest():
    z = F.normalize(torch.randn(6, 4), dim=1)
    pos, neg = E.pair_similarities(z, z)
    assert np.allclose(pos, 1) and neg.shape == (30,)
    assert np.allclose(np.sort(neg), np.sort((z @ z.T)[~torch.eye(6, dtype=torch.bool)].numpy()))


def test_nearest_neighbours_match_a_brute_force_sort():
    torch.manual_seed(1)
    query, bank = torch.randn(7, 10), torch.randn(50, 10)
    sims, idx = E.nearest_neighbours(query, bank, k=5)
    for q in range(7):
        cos = [F.cosine_similarity(query[q], bank[b], dim=0).item() for b in range(50)]
        assert idx[q].tolist() == list(np.argsort(cos)[::-1][:5])
        assert np.allclose(sims[q].numpy(), np.sort(cos)[::-1][:5], atol=1e-5)
    _, idx = E.nearest_neighbours(bank[:5], bank, k=3, query_index=range(5))
    assert all(i not in row for i, row in enumerate(idx.tolist()))


def test_retrieval_precision_counts_same_label_neighbours():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert E.retrieval_precision(features, torch.tensor([0, 0, 1, 1]), k=1) == 100
    assert E.retrieval_precision(features, torch.tensor([0, 1, 0, 1]), k=1) == 0


def test_exact_knn_graph_matches_a_full_sort_across_chunks():
    x = torch.randn(23, 4)
    dists, idx = E._exact_knn(x, 5, chunk=7)
    full = torch.cdist(x, x)
    assert (idx[:, 0] == np.arange(23)).all()  # every point is its own nearest neighbour, as UMAP expects
    assert np.allclose(dists, full.sort(dim=1).values[:, :5].numpy(), atol=1e-5)


# umap: 30 s here, mostly numba compiling
@pytest.mark.parametrize("method", [pytest.param("umap", marks=pytest.mark.slow), "tsne"])
def test_2d_maps_keep_well_separated_clusters_apart(method):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 100)) * 4
    labels = np.repeat(np.arange(3), 60)
    x = torch.tensor(centres[labels] + rng.normal(size=(180, 100)), dtype=torch.float32)
    xy = E.project_2d(x, method, seed=0)
    assert xy.shape == (180, 2)
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95  # 1-NN in the map recovers the cluster
    with pytest.raises(ValueError, match="umap"):
        E.project_2d(x, "pca")


def test_view_pairs_encode_two_augmentations_of_each_image():
    encoder = build_encoder("resnet18", cifar_stem=True, head="linear", dim=16).eval()
    images = [
        (Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)), 0) for i in range(6)
    ]
    plain = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    z1, z2 = E.view_pairs(encoder, images, plain, layer="head", batch_size=4)
    assert z1.shape == z2.shape == (6, 16) and torch.allclose(z1, z2, atol=1e-5)  # no randomness: same views
    expected, _ = E.extract_layers(
        encoder, [(torch.stack([plain(im) for im, _ in images]), torch.zeros(6))], ("head",), progress=False
    )
    assert torch.allclose(z1, expected["head"], atol=1e-5)  # eval mode: a feature does not depend on its batch
    flip_or_crop = v2.Compose([v2.RandomResizedCrop(32, scale=(0.2, 1.0)), plain])
    a1, a2 = E.view_pairs(encoder, images, flip_or_crop, layer="avgpool")
    b1, _ = E.view_pairs(encoder, images, flip_or_crop, layer="avgpool")
    assert not torch.allclose(a1, a2) and torch.equal(a1, b1)  # independent views, reproducible from the seed


def test_rank_me_is_the_exponential_entropy_of_the_normalised_singular_values():
    """Against the definition (Garrido et al. 2023, eq. 1) computed from NumPy's singular values, and its
    two anchors: r orthonormal directions of equal weight count r, a collapse onto one direction counts 1."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 40)) @ np.diag(np.linspace(0.1, 3.0, 40))
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert E.rank_me(torch.from_numpy(z)) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(100, 8)))  # 100 x 8, orthonormal columns: singular values all 1
    assert E.rank_me(torch.from_numpy(q)) == pytest.approx(8, rel=1e-5)
    line = np.outer(rng.normal(size=100), rng.normal(size=40))  # every row on one direction
    assert E.rank_me(torch.from_numpy(line)) == pytest.approx(1, abs=1e-3)
