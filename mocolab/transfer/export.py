"""A checkpoint's query backbone in the formats detection and segmentation code loads.

    python -m mocolab.transfer.export runs/imagenet/checkpoint_last.pt out.pkl --format detectron2
    python -m mocolab.transfer.export moco_v2_800ep out.pth --format mmdet

The checkpoint is anything mocolab.weights.load reads: a mocolab run, a
published checkpoint's name or a file of a known format. Every export reads
back through the same loader (weights.formats: torchvision, openmmlab,
detectron2) with the same features.

- torchvision: a ResNet state_dict; `torchvision.models.resnet50()` loads it with
  only `fc.weight` and `fc.bias` missing (strict=False).
- detectron2: the pickle of the official MoCo repo's
  `detection/convert-pretrain-to-detectron2.py` ({"model": numpy arrays,
  "__author__", "matching_heuristics": True}) with detectron2's key names
  (stem.conv1, res2..res5, convN.norm, shortcut). Its configs must say
  INPUT.FORMAT "RGB", ImageNet PIXEL_MEAN/STD on the 0-255 scale and
  RESNETS.STRIDE_IN_1X1 False: a torchvision-style ResNet on RGB input.
- mmdet: {"state_dict": {"backbone.<torchvision key>": ...}}, for an
  MMDetection / MMSegmentation `init_cfg=dict(type="Pretrained", checkpoint=...)`
  at the model level (mmcv's ResNet uses torchvision's names).

The projection head is not exported: transfer uses the backbone alone.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch

from ..run import checkpoint as ckpt
from ..ui import cli
from .. import weights
from ..weights.formats import to_detectron2

FORMATS = ("torchvision", "detectron2", "mmdet")


def backbone_state(source, allow_cifar_stem: bool = False) -> dict[str, torch.Tensor]:
    """The backbone of a checkpoint (weights.load: a path, a registry name or a Pretrained) as a torchvision
    ResNet state_dict (no `fc`)."""
    model = weights.load(source)  # a file of another kind is named as such
    state = model.encoder.backbone.state_dict()
    if model.cifar_stem and not allow_cifar_stem:
        raise ckpt.CheckpointError(
            f"{model.path}: conv1.weight is {tuple(state['conv1.weight'].shape)}, the CIFAR stem (3x3, stride 1, no "
            f"max-pool); detection and segmentation backbones expect the ImageNet stem (7x7, stride 2). "
            f"Pretrain with cifar_stem=False (the imagenet_mocov2 preset) to transfer."
        )
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def export(checkpoint, out: str | Path, fmt: str = "torchvision") -> Path:
    """Write the checkpoint's backbone (a path, a registry name or a Pretrained) to `out` in format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    state = backbone_state(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchvision":
        torch.save(state, out)
    elif fmt == "mmdet":
        torch.save({"state_dict": {"backbone." + k: v for k, v in state.items()}}, out)
    else:
        model = {k: v.numpy() for k, v in to_detectron2(state).items()}
        with open(out, "wb") as f:
            pickle.dump({"model": model, "__author__": "mocolab (MoCo v2)", "matching_heuristics": True}, f)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--format", choices=FORMATS, default="torchvision")
    args = parser.parse_args(argv)
    print(export(args.checkpoint, args.out, args.format))


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m mocolab.transfer.export"))
