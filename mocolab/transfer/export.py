"""A MoCo checkpoint's query backbone in the formats detection and segmentation code loads.

    python -m mocolab.transfer.export runs/imagenet/checkpoint_last.pt out.pkl --format detectron2

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

from .. import checkpoint as ckpt
from .. import cli
from ..config import config_from_dict

FORMATS = ("torchvision", "detectron2", "mmdet")
PREFIX = "encoder_q.backbone."


def backbone_state(path: str | Path, allow_cifar_stem: bool = False) -> dict[str, torch.Tensor]:
    """The query backbone of a mocolab checkpoint as a torchvision ResNet state_dict (no `fc`)."""
    state = ckpt.load_pretraining(path)  # another kind of file is named as such
    cfg = config_from_dict(state["config"])
    weights = {k[len(PREFIX):]: v for k, v in state["model"].items() if k.startswith(PREFIX)}
    if not weights:
        raise ckpt.CheckpointError(f"{path} holds no {PREFIX}* weights: not a MoCo encoder checkpoint")
    if cfg.cifar_stem and not allow_cifar_stem:
        raise ckpt.CheckpointError(
            f"{path}: conv1.weight is {tuple(weights['conv1.weight'].shape)}, the CIFAR stem (3x3, stride 1, no "
            f"max-pool); detection and segmentation backbones expect the ImageNet stem (7x7, stride 2). "
            f"Pretrain with cifar_stem=False (the imagenet_mocov2 preset) to transfer.")
    return {k: v.detach().cpu().clone() for k, v in weights.items()}


def to_detectron2(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys to detectron2's (the renaming of MoCo's convert-pretrain-to-detectron2.py)."""
    out = {}
    for k, v in weights.items():
        if "layer" not in k:
            k = "stem." + k  # conv1, bn1 -> stem.conv1, stem.conv1.norm (below)
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = v
    return out


def from_detectron2(weights: dict) -> dict[str, torch.Tensor]:
    """The inverse renaming (for round trips and for reading detectron2 weights back)."""
    out = {}
    for k, v in weights.items():
        k = k.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
        for t in (1, 2, 3):
            k = k.replace(f"conv{t}.norm", f"bn{t}")
        for t in (1, 2, 3, 4):
            k = k.replace(f"res{t + 1}", f"layer{t}")
        out[k.removeprefix("stem.")] = torch.as_tensor(v)
    return out


def export(checkpoint: str | Path, out: str | Path, fmt: str = "torchvision") -> Path:
    """Write the checkpoint's backbone to `out` in format `fmt` (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    weights = backbone_state(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchvision":
        torch.save(weights, out)
    elif fmt == "mmdet":
        torch.save({"state_dict": {"backbone." + k: v for k, v in weights.items()}}, out)
    else:
        model = {k: v.numpy() for k, v in to_detectron2(weights).items()}
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
