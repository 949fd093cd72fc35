"""Encoders for MoCo: a torchvision ResNet backbone, a projection head, split BN.

docs/protocols.md section 1: ResNet-50 with the v2 MLP head (Linear-ReLU-Linear)
for ImageNet; ResNet-18 with the CIFAR stem (conv1 3x3 stride 1, no max-pool)
and one Linear head for the CIFAR-10 demo; split BatchNorm to simulate
per-GPU BN statistics on one device.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# Narrow ResNets of BasicBlocks, a teaching approximation for CPUs: (blocks per stage, widths per stage).
NARROW = {"resnet10_w16": ((1, 1, 1, 1), (16, 32, 64, 128)), "resnet10_w32": ((1, 1, 1, 1), (32, 64, 128, 256))}
ARCHS = ("resnet18", "resnet34", "resnet50", *NARROW)
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per sub-batch.

    The batch of N images is normalised as `num_splits` independent groups of
    N/num_splits, as if each group sat on its own GPU; this is what makes
    shuffle BN meaningful on one device. Split s holds samples s, s+S, s+2S, ...
    (a zero-copy view). The running statistics are the mean of the splits'.
    In eval mode it is an ordinary BatchNorm2d.
    """

    def __init__(self, num_features: int, num_splits: int = 8, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        N, C, H, W = x.shape
        S = self.num_splits
        if N % S:
            raise ValueError(f"SplitBatchNorm: batch of {N} is not divisible by num_splits={S}")
        # Folding the splits into channels gives each split its own BN channels.
        mean, var = self.running_mean.repeat(S), self.running_var.repeat(S)
        weight = self.weight.repeat(S) if self.affine else None
        bias = self.bias.repeat(S) if self.affine else None
        y = F.batch_norm(
            x.reshape(N // S, S * C, H, W),
            mean,
            var,
            weight,
            bias,
            True,
            self.momentum if self.momentum is not None else 0.1,
            self.eps,
        )
        with torch.no_grad():  # F.batch_norm updated the per-split copies; keep their average (written in place)
            torch.mean(mean.view(S, C), 0, out=self.running_mean)
            torch.mean(var.view(S, C), 0, out=self.running_var)
            self.num_batches_tracked += 1
        # Not y.view: an in-place ReLU on a view of y makes autograd rebuild y's gradient through a copy of the
        # whole activation (CopySlices) at every split BN. _unsafe_view is the same reshape, with a plain backward.
        return torch.ops.aten._unsafe_view(y, (N, C, H, W))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"


class NarrowResNet(torchvision.models.ResNet):
    """torchvision's ResNet of BasicBlocks at other depths and widths (`NARROW`), same attribute names.

    Not a published architecture: the CPU teaching preset's way to make MoCo
    visibly learn in minutes (docs/protocols.md section 4). Initialised as
    torchvision initialises its ResNets.
    """

    def __init__(self, blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128), norm_layer=nn.BatchNorm2d):
        nn.Module.__init__(self)
        # What torchvision's _make_layer reads: BasicBlock supports only groups 1 and base width 64.
        self._norm_layer, self.dilation, self.groups, self.base_width = norm_layer, 1, 1, 64
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (n, width) in enumerate(zip(blocks, widths)):
            setattr(
                self,
                f"layer{i + 1}",
                self._make_layer(torchvision.models.resnet.BasicBlock, width, n, stride=1 if i == 0 else 2),
            )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def resnet(arch: str = "resnet50", cifar_stem: bool = False, bn_splits: int = 1) -> nn.Module:
    """A randomly initialised torchvision ResNet without its classifier (`fc` is Identity).

    cifar_stem: conv1 3x3 stride 1 and no max-pool, for 32 px inputs (the demo's).
    bn_splits > 1: every BatchNorm is a SplitBatchNorm with that many splits.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    norm_layer = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    if arch in NARROW:
        net = NarrowResNet(*NARROW[arch], norm_layer=norm_layer)
    else:
        net = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer)
    if cifar_stem:
        # Like the demo, the new conv keeps PyTorch's default initialisation.
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.out_dim = net.fc.in_features  # 512 for ResNet-18/34, 2048 for ResNet-50
    net.fc = nn.Identity()
    return net


def stage_outputs(backbone: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Feature maps after the stem (conv1+bn+relu, before max-pool) and layer1..layer4.

    These are the taps of the feat1..feat5 evaluation protocol.
    """
    x = backbone.relu(backbone.bn1(backbone.conv1(x)))
    out = {"stem": x}
    x = backbone.maxpool(x)
    for name in STAGES[1:]:
        x = getattr(backbone, name)(x)
        out[name] = x
    return out


def linear_head(in_dim: int, dim: int = 128) -> nn.Module:
    """The CIFAR demo's head: one Linear in_dim -> dim."""
    return nn.Linear(in_dim, dim)


def mlp_head(in_dim: int, dim: int = 128, hidden: int | None = None) -> nn.Module:
    """The MoCo v2 head: Linear in_dim -> hidden (default in_dim), ReLU, Linear hidden -> dim; no BN."""
    hidden = hidden or in_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def mocov3_head(in_dim: int, dim: int = 256, hidden: int = 4096) -> nn.Module:
    """MoCo v3's ResNet projector (moco-v3 moco/builder.py, _build_mlp(2, ...)), to read its checkpoints:
    Linear in_dim -> hidden without bias, BN, ReLU, Linear hidden -> dim without bias, BN without affine."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim, bias=False),
        nn.BatchNorm1d(dim, affine=False),
    )


class Encoder(nn.Module):
    """Backbone followed by the projection head; `forward` returns the (unnormalised) embedding."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """The embedding; with_features: (embedding, pooled backbone features), from one pass (the online
        probe reads the features of the step's own forward). Through `__call__`, so a compiled encoder stays
        compiled."""
        h = self.backbone(x)
        return (self.head(h), h) if with_features else self.head(h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled backbone output: 512-d (ResNet-18) or 2048-d (ResNet-50)."""
        return self.backbone(x)


def build_encoder(
    arch: str = "resnet50", cifar_stem: bool = False, head: str = "mlp", dim: int = 128, bn_splits: int = 1
) -> Encoder:
    """Encoder of the MoCo v2 recipe (defaults) or of the demo (resnet18, cifar_stem, linear head)."""
    heads = {"linear": linear_head, "mlp": mlp_head}
    if head not in heads:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(heads)}")
    backbone = resnet(arch, cifar_stem=cifar_stem, bn_splits=bn_splits)
    return Encoder(backbone, heads[head](backbone.out_dim, dim))
