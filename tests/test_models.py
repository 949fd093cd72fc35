"""Encoders: split BN against per-sub-batch BN, stems, stage shapes, heads."""

import pytest
import torch
from torch import nn

from mocolab.check.operations import Operations
from mocolab.models import SplitBatchNorm, build_encoder, resnet, stage_outputs


def test_split_batchnorm_equals_batchnorm_on_each_sub_batch():
    S, C = 4, 3
    split = SplitBatchNorm(C, num_splits=S)
    with torch.no_grad():
        split.weight.copy_(torch.randn(C))
        split.bias.copy_(torch.randn(C))
    x = torch.randn(16, C, 5, 5) * 3 + 1
    y = split(x)
    mean_updates, var_updates = [], []
    for s in range(S):  # split s holds samples s, s+S, s+2S, ...
        bn = nn.BatchNorm2d(C)
        bn.load_state_dict({k: v for k, v in split.state_dict().items()}, strict=False)
        bn.running_mean.zero_()
        bn.running_var.fill_(1)
        assert torch.allclose(y[s::S], bn(x[s::S]), atol=1e-5)
        mean_updates.append(bn.running_mean)
        var_updates.append(bn.running_var)
    # Running statistics: the mean of the splits' updates.
    assert torch.allclose(split.running_mean, torch.stack(mean_updates).mean(0), atol=1e-6)
    assert torch.allclose(split.running_var, torch.stack(var_updates).mean(0), atol=1e-6)


def test_split_batchnorm_under_an_inplace_relu_has_per_split_gradients_and_copies_nothing():
    """The backward through split BN and the in-place ReLU of a ResNet block: the gradients of per-split BNs,
    with no copy of the activation (autograd copies one when the ReLU writes into a view) and the running
    statistics written in place (before: 5 copies per call, 26 operations in all, 19 now)."""
    S, C = 4, 3
    split = SplitBatchNorm(C, num_splits=S)
    with torch.no_grad():
        split.weight.copy_(torch.randn(C))
        split.bias.copy_(torch.randn(C))
    x = (torch.randn(16, C, 5, 5) * 3 + 1).requires_grad_()
    upstream = torch.randn(16, C, 5, 5)
    with Operations() as ops:
        (torch.relu_(split(x * 1)) * upstream).sum().backward()
    assert ops.by_name["copy_"] == ops.by_name["clone"] == 0, ops.by_name
    reference = [nn.BatchNorm2d(C) for _ in range(S)]
    x_ref = x.detach().clone().requires_grad_()
    for s, bn in enumerate(reference):
        bn.load_state_dict({"weight": split.weight.detach(), "bias": split.bias.detach()}, strict=False)
        (torch.relu(bn(x_ref[s::S])) * upstream[s::S]).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert torch.allclose(split.weight.grad, sum(bn.weight.grad for bn in reference), atol=1e-4)
    assert torch.allclose(split.bias.grad, sum(bn.bias.grad for bn in reference), atol=1e-4)


def test_split_batchnorm_in_eval_mode_is_plain_batchnorm():
    split, plain = SplitBatchNorm(3, num_splits=4), nn.BatchNorm2d(3)
    for bn in (split, plain):
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
        bn.eval()
    x = torch.randn(5, 3, 4, 4)  # 5 is not divisible by 4: eval mode does not split
    assert torch.allclose(split(x), plain(x))


def test_split_batchnorm_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible by num_splits=4"):
        SplitBatchNorm(3, num_splits=4)(torch.randn(6, 3, 2, 2))


def test_cifar_stem_keeps_resolution_and_resnet50_stages_match_protocol_table():
    small = resnet("resnet18", cifar_stem=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    shapes = {k: tuple(v.shape[1:]) for k, v in stage_outputs(small.eval(), torch.randn(1, 3, 32, 32)).items()}
    assert shapes == {
        "stem": (64, 32, 32),
        "layer1": (64, 32, 32),
        "layer2": (128, 16, 16),
        "layer3": (256, 8, 8),
        "layer4": (512, 4, 4),
    }
    big = resnet("resnet50").eval()
    with torch.no_grad():
        shapes = {k: tuple(v.shape[1:]) for k, v in stage_outputs(big, torch.randn(1, 3, 224, 224)).items()}
    assert shapes == {
        "stem": (64, 112, 112),
        "layer1": (256, 56, 56),
        "layer2": (512, 28, 28),
        "layer3": (1024, 14, 14),
        "layer4": (2048, 7, 7),
    }


def test_heads_and_features():
    v2 = build_encoder("resnet50", head="mlp")
    assert [type(m) for m in v2.head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (v2.head[0].in_features, v2.head[0].out_features, v2.head[2].out_features) == (2048, 2048, 128)
    demo = build_encoder("resnet18", cifar_stem=True, head="linear", bn_splits=8).eval()
    assert isinstance(demo.head, nn.Linear) and (demo.head.in_features, demo.head.out_features) == (512, 128)
    assert sum(isinstance(m, SplitBatchNorm) for m in demo.modules()) == 20
    x = torch.randn(2, 3, 32, 32)
    assert demo(x).shape == (2, 128) and demo.features(x).shape == (2, 512)


def test_unknown_arch_and_head_are_named():
    with pytest.raises(ValueError, match="unknown arch 'resnet7'"):
        resnet("resnet7")
    with pytest.raises(ValueError, match="unknown head 'bn'"):
        build_encoder("resnet18", head="bn")
