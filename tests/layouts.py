"""Checkpoint files in the exact key layouts of the sources mocolab reads, for tests and benchmarks.

Each writer follows the code that saves such files in the source's repository (cited per writer; the
mapping is docs/protocols.md section 5): a seeded torchvision ResNet-50, with random BN statistics and
affine parameters so that a swapped buffer would show, is wrapped and saved the way that code saves it.
Each returns the source modules whose outputs the loaded encoder must reproduce.
"""

import collections
import pickle
import re

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def randomise_bn(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return module.eval()


def resnet50(seed: int, fc: nn.Module | None = None, num_classes: int = 1000) -> nn.Module:
    torch.manual_seed(seed)
    net = torchvision.models.resnet50(num_classes=num_classes)
    if fc is not None:
        net.fc = fc
    return randomise_bn(net, seed)


def mlp_v2(dim=128):  # facebookresearch/moco moco/builder.py with mlp=True: Linear, ReLU, then the fc
    return nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, dim))


def projector_v3():  # facebookresearch/moco-v3 moco/builder.py: _build_mlp(2, 2048, 4096, 256), last_bn=True
    return nn.Sequential(
        nn.Linear(2048, 4096, bias=False),
        nn.BatchNorm1d(4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, 256, bias=False),
        nn.BatchNorm1d(256, affine=False),
    )


def state(prefix: str, module: nn.Module) -> dict:
    return {prefix + k: v for k, v in module.state_dict().items()}


def body(net: nn.Module) -> dict:
    """A torchvision ResNet's state dict without its fc."""
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def queue() -> dict:
    return {"queue": F.normalize(torch.randn(128, 512), dim=0), "queue_ptr": torch.zeros(1, dtype=torch.long)}


def write_moco_official(path, version: str = "v2"):
    """facebookresearch/moco main_moco.py: {"epoch", "arch", "state_dict" of the DDP module, "optimizer"};
    builder.py: encoder_q/encoder_k are resnet50(num_classes=128), mlp=True puts Linear-ReLU before that fc."""
    fc = (lambda: nn.Linear(2048, 128)) if version == "v1" else mlp_v2
    q, k = resnet50(0, fc()), resnet50(1, fc())
    sd = collections.OrderedDict(
        {
            **state("module.encoder_q.", q),
            **state("module.encoder_k.", k),
            **{f"module.{n}": v for n, v in queue().items()},
        }
    )
    optimizer = torch.optim.SGD(q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": optimizer.state_dict()}, path)
    return q, q.fc


def write_mocov3_official(path):
    """facebookresearch/moco-v3 main_moco.py (+ scaler) and MoCo_ResNet: base_encoder.fc is the projector."""
    base, momentum = resnet50(0, randomise_bn(projector_v3(), 5)), resnet50(1, projector_v3())
    predictor = nn.Sequential(
        nn.Linear(256, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True), nn.Linear(4096, 256, bias=False)
    )
    sd = {
        **state("module.base_encoder.", base),
        **state("module.momentum_encoder.", momentum),
        **state("module.predictor.", predictor),
    }
    torch.save(
        {
            "epoch": 300,
            "arch": "resnet50",
            "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": []},
            "scaler": torch.amp.GradScaler("cpu").state_dict(),
        },
        path,
    )
    return base, base.fc


def write_mmselfsup_0x(path, q: nn.Module, k: nn.Module, neck: nn.Module):
    """open-mmlab/mmselfsup 0.x: MoCo's encoder_q = Sequential(backbone, neck), the same modules also registered
    as `backbone` and `neck` (so the state dict names them twice); publish_model.py keeps meta and saves in the
    pre-1.6 format. q and k: torchvision ResNet-50s (their fc is not saved); neck: MoCoV2Neck's mlp."""
    sd = collections.OrderedDict()
    sd.update({f"encoder_q.0.{n}": v for n, v in body(q).items()})
    sd.update(state("encoder_q.1.mlp.", neck))
    sd.update({f"encoder_k.0.{n}": v for n, v in body(k).items()})
    sd.update(state("encoder_k.1.mlp.", mlp_v2()))
    sd.update({f"backbone.{n}": v for n, v in body(q).items()})
    sd.update(state("neck.mlp.", neck))
    sd.update(queue())
    meta = {
        "mmcv_version": "1.4.4",
        "time": "Fri Feb 25 06:17:13 2022",
        "env_info": "sys.platform: linux",
        "seed": np.int64(0),
        "exp_name": "mocov2_resnet50_8xb32-coslr-200e_in1k.py",
        "epoch": 200,
        "iter": 1000800,
        "config": "model = dict(type='MoCo', queue_len=65536, feat_dim=128)",
    }
    torch.save({"meta": meta, "state_dict": sd}, path, _use_new_zipfile_serialization=False)
    return path


def write_mmpretrain_1x(path, q: nn.Module, neck: nn.Module):
    """open-mmlab/mmpretrain selfsup/base.py + moco.py: backbone, neck, and encoder_k an
    ExponentialMovingAverage (its copy under `module.`, a `steps` buffer); mmengine's meta."""
    sd = {
        **{f"backbone.{n}": v for n, v in body(q).items()},
        **state("neck.mlp.", neck),
        **{f"encoder_k.module.0.{n}": v.clone() for n, v in body(q).items()},
        **state("encoder_k.module.1.mlp.", mlp_v2()),
        "encoder_k.steps": torch.tensor(1000800),
        **queue(),
    }
    torch.save(
        {"meta": {"mmengine_version": "0.1.0", "dataset_meta": {}, "seed": 0, "epoch": 200}, "state_dict": sd}, path
    )
    return path


def write_torchvision(path, q: nn.Module, layout: str = "supervised"):
    """torchvision's resnet50().state_dict() ("supervised": fc is the classifier); DINO's and Barlow Twins' hub
    files ("backbone only": no fc, hubconf.py loads them with strict=False); MMSelfSup's
    tools/model_converters/extract_backbone_weights.py ({"state_dict": ..., "author": "MMSelfSup"})."""
    sd = q.state_dict() if layout == "supervised" else body(q)
    torch.save({"state_dict": sd, "author": "MMSelfSup"} if layout == "extract_backbone_weights" else sd, path)
    return path


def rename_for_detectron2(key: str) -> str:
    """facebookresearch/moco detection/convert-pretrain-to-detectron2.py, written from its description: stem.
    for keys outside the stages, layerN -> res(N+1), bnN -> convN.norm, downsample.0/1 -> shortcut(.norm)."""
    key = key if "layer" in key else "stem." + key
    key = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn(\d)", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def write_detectron2(path):
    """The official converter renames every encoder_q key, fc included (stem.fc.*), and pickles numpy arrays."""
    q = resnet50(0, mlp_v2())
    model_dict = {rename_for_detectron2(k): v.numpy() for k, v in q.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": model_dict, "__author__": "MOCO", "matching_heuristics": True}, f)
    return q, q.fc
