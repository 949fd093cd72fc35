"""The online linear probe: its step against SGD written out from the definition, and a run with it
trains the same MoCo weights as one without and resumes exactly."""

import csv
import inspect

import pytest
import torch

import mocolab.pretraining
from mocolab import ConfigError, make_config, pretrain
from mocolab.online_probe import OnlineProbe


def test_a_probe_step_is_sgd_with_momentum_on_the_cross_entropy_of_standardised_features():
    """Two steps against the gradient of the mean cross-entropy, by hand in float64: the features standardised
    by their batch's mean and (biased) variance, logits x W^T + b from zero weights, dL/dlogits = (softmax -
    one-hot) / N, then SGD with momentum 0.9 (the first step's buffer is the gradient itself)."""
    torch.manual_seed(0)
    N, D, C, lr = 12, 5, 3, 0.1
    batches = [(torch.randn(N, D) * 7 + 3, torch.randint(0, C, (N,))) for _ in range(2)]
    probe = OnlineProbe(D, C, "cpu", lr=lr)
    W, b = torch.zeros(C, D, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    buf_W, buf_b = torch.zeros_like(W), torch.zeros_like(b)
    for step, (x, y) in enumerate(batches):
        lr_scale = 0.5 if step else 1.0  # the run's schedule scales the probe's lr
        stats = probe.step(x, y, lr_scale)
        x = x.double()
        x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
        logits = x_hat @ W.T + b
        p = torch.softmax(logits, dim=1)
        loss = -torch.log(p[torch.arange(N), y]).mean()
        G = (p - torch.nn.functional.one_hot(y, C).double()) / N
        grad_W, grad_b = G.T @ x_hat, G.sum(0)
        buf_W, buf_b = (grad_W, grad_b) if step == 0 else (0.9 * buf_W + grad_W, 0.9 * buf_b + grad_b)
        W, b = W - lr * lr_scale * buf_W, b - lr * lr_scale * buf_b
        assert stats[0].item() == pytest.approx(loss.item(), abs=1e-5)
        assert stats[1].item() == pytest.approx((logits.argmax(1) == y).double().mean().item())
    linear = probe.head[1]
    assert torch.allclose(linear.weight.double(), W, atol=1e-5) and torch.allclose(linear.bias.double(), b, atol=1e-5)


def test_the_probe_learns_a_linear_boundary_whatever_the_scale_of_the_features():
    """Three separable Gaussian classes whose features are in the thousands (raw pooled features differ in
    scale across architectures): standardised, one learning rate finds the boundary; read on held-out points."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 16, generator=generator) * 3

    def sample(n):
        y = torch.randint(0, 3, (n,), generator=generator)
        return (centres[y] + torch.randn(n, 16, generator=generator)) * 1000, y

    probe = OnlineProbe(16, 3, "cpu")
    for _ in range(100):
        probe.step(*sample(64))
    assert probe.top1(*sample(1000)) > 95


def test_building_a_probe_draws_nothing_from_the_random_stream():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    OnlineProbe(512, 10, "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_the_probe_needs_the_knn_monitor():
    with pytest.raises(ConfigError, match="knn_every"):
        make_config("tiny", online_probe=True, knn_every=0)


def tiny(cifar10_root, folder, **kw):
    return make_config(
        "tiny", dataset="imagefolder", gpus=0, data_root=str(cifar10_root), output_dir=str(folder / "run"), **kw
    )


@pytest.mark.slow
def test_a_run_with_the_probe_trains_the_same_moco_weights_and_resumes_exactly(cifar10_root, tmp_path, monkeypatch):
    with_probe = pretrain(tiny(cifar10_root, tmp_path / "a", online_probe=True), progress=False)
    without = pretrain(tiny(cifar10_root, tmp_path / "b"), progress=False)
    a, b = with_probe.model.state_dict(), without.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the probe changed the MoCo run"
    assert [r.get("probe_top1") is not None for r in with_probe.history] == [False, True, True]
    rows = list(csv.DictReader(open(tmp_path / "a" / "run" / "metrics.csv")))
    assert {"probe_top1", "probe_loss", "probe_train_acc"} <= set(rows[0])

    real_epoch = mocolab.pretraining.train_one_epoch

    def crash_in_second_epoch(*args, **kwargs):
        if inspect.signature(real_epoch).bind(*args, **kwargs).arguments["epoch"] == 1:
            raise KeyboardInterrupt("simulated crash")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(mocolab.pretraining, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(cifar10_root, tmp_path / "c", online_probe=True), progress=False)
    monkeypatch.undo()
    resumed = pretrain(tiny(cifar10_root, tmp_path / "c", online_probe=True, resume=True), progress=False)
    keys = ("probe_top1", "probe_loss", "probe_train_acc", "knn_top1")
    assert [[r.get(k) for k in keys] for r in resumed.history] == [[r.get(k) for k in keys] for r in with_probe.history]
    s, r = with_probe.probe.state_dict()["head"], resumed.probe.state_dict()["head"]
    assert all(torch.equal(s[k], r[k]) for k in s)
