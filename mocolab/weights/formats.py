"""Checkpoint formats: recognised from their keys, converted to mocolab's Encoder keys.

A format turns a file's content into `Parts`: the backbone's weights with
torchvision's ResNet names, the projection head's weights (or None) and what
it set aside (the key encoder, the queue, a supervised classifier). Every key
of the weights is accounted for: one that fits neither the backbone, the head
nor the set-aside list is named in the error, as is one the model lacks.
docs/protocols.md section 5 lists each format's key mapping and the source
file it was read from; weights.registry cites them per checkpoint.

    name             written by                                         backbone keys         head keys
    mocolab          mocolab's pretraining (checkpoint_last.pt) and     encoder_q.backbone.*  encoder_q.head.*
                     its encoder export (weights.teaching.compact)
    moco_official    facebookresearch/moco main_moco.py                 module.encoder_q.*    module.encoder_q.fc.*
    mocov3_official  facebookresearch/moco-v3 main_moco.py              module.base_encoder.* module.base_encoder.fc.*
    openmmlab        MMSelfSup 0.x / 1.x, mmpretrain, mocolab's mmdet   state_dict backbone.* state_dict neck.mlp.*
    torchvision      torchvision, DINO, Barlow Twins, mocolab's export  conv1.*, layer1.* ...  (fc.* set aside)
    detectron2       moco's convert-pretrain-to-detectron2.py, mocolab  model stem.*, res2-5.* model stem.fc.*
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..run import checkpoint as ckpt
from ..models import NARROW, Encoder, linear_head, mlp_head, mocov3_head, resnet


@dataclass
class Parts:
    """What a format found in a file: backbone and head weights (mocolab's names), and what it set aside."""

    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None
    set_aside: list[str] = field(default_factory=list)  # e.g. "encoder_k.* (the key encoder)"


@dataclass(frozen=True)
class Format:
    name: str
    writers: str  # who writes files of this format
    source: str  # the file whose code establishes the layout, repo:path
    matches: Callable[[object], bool]
    split: Callable[[object], Parts]


# ----------------------------------------------------------------------------
# Reading keys
# ----------------------------------------------------------------------------


def _tensors(state) -> dict | None:
    """A dict's `state_dict` (or the dict itself) with DDP's "module." prefix removed, or None."""
    if not isinstance(state, dict):
        return None
    inner = state.get("state_dict", state)
    if not isinstance(inner, dict) or not inner:
        return None
    if all(isinstance(k, str) and k.startswith("module.") for k in inner):
        inner = {k[len("module.") :]: v for k, v in inner.items()}
    return inner


def _has(state, key: str) -> bool:
    inner = _tensors(state)
    return inner is not None and key in inner


def _partition(weights: dict, backbone: str, head: str | None, set_aside: dict[str, str], where: str) -> Parts:
    """Split `weights` by key prefix; a key under none of the prefixes is named in a CheckpointError."""
    parts = Parts({}, {} if head else None, [])
    leftover = []
    for key, value in weights.items():
        if head and key.startswith(head):
            parts.head[key[len(head) :]] = torch.as_tensor(value)
        elif any(key.startswith(prefix) for prefix in set_aside):
            continue
        elif key.startswith(backbone):
            parts.backbone[key[len(backbone) :]] = torch.as_tensor(value)
        else:
            leftover.append(key)
    if leftover:
        raise ckpt.CheckpointError(
            f"{where}: unexpected keys {_few(leftover)} (neither the backbone "
            f"{backbone}*, the head {head or '(none)'}* nor set aside)"
        )
    parts.set_aside = [
        f"{prefix}* ({why})" for prefix, why in set_aside.items() if any(k.startswith(prefix) for k in weights)
    ]
    if parts.head is not None and not parts.head:
        parts.head = None
    return parts


def _few(items, n: int = 8) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


# ----------------------------------------------------------------------------
# The formats
# ----------------------------------------------------------------------------


def _mocolab(state) -> Parts:
    return _partition(
        state["model"],
        "encoder_q.backbone.",
        "encoder_q.head.",
        {"encoder_k.": "the key encoder", "queue.": "the queue of keys"},
        "mocolab checkpoint",
    )


def _moco_official(state) -> Parts:
    return _partition(
        _tensors(state),
        "encoder_q.",
        "encoder_q.fc.",
        {"encoder_k.": "the key encoder", "queue": "the queue of keys and its pointer"},
        "MoCo v1/v2 checkpoint",
    )


def _mocov3_official(state) -> Parts:
    return _partition(
        _tensors(state),
        "base_encoder.",
        "base_encoder.fc.",
        {"momentum_encoder.": "the momentum encoder", "predictor.": "the query predictor"},
        "MoCo v3 checkpoint",
    )


def _openmmlab(state) -> Parts:
    weights = _tensors(state)
    zero_x = "backbone.conv1.weight" not in weights  # MMSelfSup 0.x registers encoder_q.0 also as `backbone`
    backbone, head = ("encoder_q.0.", "encoder_q.1.mlp.") if zero_x else ("backbone.", "neck.mlp.")
    set_aside = {
        "encoder_k.": "the key encoder",
        "queue": "the queue of keys and its pointer",
        "head.": "the loss head",
        "data_preprocessor.": "the input normalisation",
    }
    if not zero_x:
        set_aside["encoder_q."] = "a second name of backbone and neck"
    return _partition(weights, backbone, head, set_aside, "OpenMMLab checkpoint")


def _torchvision(state) -> Parts:
    return _partition(
        _tensors(state),
        "",
        None,
        {"fc.": "a supervised classifier, not a projection head"},
        "torchvision-layout state dict",
    )


def _detectron2(state) -> Parts:
    weights = from_detectron2(state["model"])  # the official converter also renames encoder_q.fc to stem.fc
    parts = _partition(
        {("head." + k[3:] if k.startswith("fc.") else k): v for k, v in weights.items()},
        "",
        "head.",
        {},
        "detectron2 file",
    )
    return parts


def _is_mocolab(state) -> bool:
    return ckpt.kind_of(state) in ("pretraining", "encoder")  # a run's checkpoint, or its encoder export


def _is_detectron2(state) -> bool:
    return isinstance(state, dict) and isinstance(state.get("model"), dict) and "stem.conv1.weight" in state["model"]


def _is_torchvision(state) -> bool:
    return not _is_mocolab(state) and _has(state, "conv1.weight") and _has(state, "layer1.0.conv1.weight")


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "mocolab",
            "mocolab's pretraining and its encoder export",
            "mocolab/runlog.py (end_of_epoch), mocolab/weights/teaching.py (compact)",
            _is_mocolab,
            _mocolab,
        ),
        Format(
            "moco_official",
            "the official MoCo v1/v2 code",
            "facebookresearch/moco:main_moco.py, moco/builder.py",
            lambda s: _has(s, "encoder_q.conv1.weight"),
            _moco_official,
        ),
        Format(
            "mocov3_official",
            "the official MoCo v3 code",
            "facebookresearch/moco-v3:main_moco.py, moco/builder.py",
            lambda s: _has(s, "base_encoder.conv1.weight"),
            _mocov3_official,
        ),
        Format(
            "openmmlab",
            "MMSelfSup 0.x and 1.x, mmpretrain, mocolab's mmdet export",
            "open-mmlab/mmselfsup:mmselfsup/models/algorithms/moco.py; open-mmlab/mmpretrain:"
            "mmpretrain/models/selfsup/moco.py",
            lambda s: _has(s, "backbone.conv1.weight") or _has(s, "encoder_q.0.conv1.weight"),
            _openmmlab,
        ),
        Format(
            "torchvision",
            "torchvision, DINO, Barlow Twins, MMSelfSup's extract_backbone_weights, mocolab's export",
            "pytorch/vision:torchvision/models/resnet.py",
            _is_torchvision,
            _torchvision,
        ),
        Format(
            "detectron2",
            "facebookresearch/moco's convert-pretrain-to-detectron2.py, mocolab's export",
            "facebookresearch/moco:detection/convert-pretrain-to-detectron2.py",
            _is_detectron2,
            _detectron2,
        ),
    )
}


def recognise(state, path) -> Format:
    """The format of a file's content, or a CheckpointError listing the known formats and the keys found."""
    for fmt in FORMATS.values():
        if fmt.matches(state):
            return fmt
    if ckpt.kind_of(state) is not None:  # a mocolab checkpoint of another kind (fine-tuning)
        raise ckpt.CheckpointError(
            f"{path} is {ckpt.describe(state)}, not a pretrained encoder; pass a pretraining "
            f"checkpoint, a published checkpoint's name or file"
        )
    raise ckpt.CheckpointError(
        f"{path} is in no checkpoint format mocolab knows ({', '.join(FORMATS)}; "
        f"docs/protocols.md section 5); {key_sample(state)}"
    )


def key_sample(state) -> str:
    """A few of the keys found, for an error about an unknown file."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict of weights"
    found = f"its keys are {_few(map(str, state), 6)}"
    inner = _tensors(state)
    if inner is not None and inner is not state and isinstance(state.get("state_dict"), dict):
        found += f"; state_dict's begin {_few(map(str, inner), 6)}"
    return found


# ----------------------------------------------------------------------------
# detectron2's names (MoCo's convert-pretrain-to-detectron2.py renaming)
# ----------------------------------------------------------------------------


def to_detectron2(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys to detectron2's: stem.conv1, res2..res5, convN.norm, shortcut."""
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


# ----------------------------------------------------------------------------
# Building the encoder
# ----------------------------------------------------------------------------

STANDARD = {
    ("basic", (2, 2, 2, 2), 64): "resnet18",
    ("basic", (3, 4, 6, 3), 64): "resnet34",
    ("bottleneck", (3, 4, 6, 3), 64): "resnet50",
}
STANDARD.update({("basic", blocks, widths[0]): name for name, (blocks, widths) in NARROW.items()})


def infer_arch(backbone: dict, where) -> tuple[str, bool]:
    """(arch, cifar_stem) of ResNet weights with torchvision's names; a CheckpointError for another network."""
    if "conv1.weight" not in backbone or "layer1.0.conv1.weight" not in backbone:
        raise ckpt.CheckpointError(
            f"{where}: not a ResNet (no conv1.weight / layer1.0.conv1.weight among "
            f"{_few(backbone, 5)}); mocolab builds ResNets: {', '.join(STANDARD.values())}"
        )
    block = "bottleneck" if "layer1.0.conv3.weight" in backbone else "basic"
    blocks = tuple(len({k.split(".")[1] for k in backbone if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4))
    width = backbone["conv1.weight"].shape[0]
    arch = STANDARD.get((block, blocks, width))
    if arch is None:
        raise ckpt.CheckpointError(
            f"{where}: a ResNet of {block} blocks {blocks}, stem width {width}, which mocolab "
            f"does not build (it builds {', '.join(STANDARD.values())}); ResNet-101 is "
            f"bottleneck (3, 4, 23, 3)"
        )
    return arch, backbone["conv1.weight"].shape[-1] == 3  # the CIFAR stem's conv1 is 3x3


def build_head(weights: dict | None, where) -> nn.Module | None:
    """The head whose weights these are: one Linear, MoCo v2's MLP or MoCo v3's projector (by their keys)."""
    if weights is None:
        return None
    keys = {k.split(".")[0] for k in weights}
    if keys <= {"weight", "bias"}:  # a missing bias is named by load_state below
        head = linear_head(weights["weight"].shape[1], weights["weight"].shape[0])
    elif keys == {"0", "2"}:
        hidden, in_dim = weights["0.weight"].shape
        head = mlp_head(in_dim, weights["2.weight"].shape[0], hidden=hidden)
    elif keys == {"0", "1", "3", "4"}:
        hidden, in_dim = weights["0.weight"].shape
        head = mocov3_head(in_dim, weights["3.weight"].shape[0], hidden=hidden)
    else:
        raise ckpt.CheckpointError(
            f"{where}: a projection head mocolab does not know (keys {_few(weights, 6)}); "
            f"it knows one Linear, MoCo v2's Linear-ReLU-Linear and MoCo v3's projector"
        )
    ckpt.load_state(head, weights, f"{where} (head)")
    return head


def build(parts: Parts, where) -> tuple[Encoder, str, bool]:
    """(encoder in eval mode, arch, cifar_stem) from a format's parts, every tensor checked by name and shape."""
    arch, cifar_stem = infer_arch(parts.backbone, where)
    backbone = resnet(arch, cifar_stem=cifar_stem)
    weights = dict(parts.backbone)
    for key in backbone.state_dict():  # a BN's step counter has no effect on features; some writers drop it
        if key.endswith("num_batches_tracked"):
            weights.setdefault(key, torch.tensor(0))
    ckpt.load_state(backbone, weights, where)
    encoder = Encoder(backbone, build_head(parts.head, where)).eval()
    encoder.source = str(where)  # named in errors about it (a backbone-only file asked for head features)
    return encoder, arch, cifar_stem
