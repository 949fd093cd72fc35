"""Published ResNet checkpoints, as data: where each comes from, how to check it, what its page reports.

Every entry was read off its source's own repository at the commit it names:
the download link and checksum from the README or model-zoo page, the key
layout from the code that saved the file (`layout_source`), the numbers from
the page that publishes them (`numbers_source`). docs/protocols.md section 5
lists the formats. Numbers use the keys of mocolab.reference.EVALUATION and
TRANSFER ("linear_imagenet": {"avgpool": top-1}, "knn_imagenet": {k: top-1},
"voc_detection": {"AP50": ...}), so a table can put them beside a measurement.

    python -m mocolab.weights list        # this table
    python -m mocolab.weights fetch moco_v2_800ep
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..reference import EVALUATION, TRANSFER

IMAGENET = "ImageNet-1k train (1.28M images, no labels used)"


@dataclass(frozen=True)
class Published:
    """One published checkpoint."""

    name: str  # what mocolab calls it: load("moco_v2_800ep")
    title: str
    repo: str  # the source's GitHub repository
    commit: str  # the commit of `repo` whose README and code were read
    url: str
    checksum: str | None  # "md5:<prefix>" or "sha256:<prefix>" as the source publishes it; None: it publishes none
    format: str  # a key of weights.formats.FORMATS
    layout_source: str  # the file(s) of `repo` that write the keys this format reads
    numbers: dict = field(default_factory=dict)  # what the source's page reports for this very file
    numbers_source: str = ""
    epochs: int = 200
    arch: str = "resnet50"
    head: str | None = "mlp"  # the projection head in the file: "mlp", "linear", "mocov3" or None (backbone only)
    augmentation: str = "aug_plus"  # the mocolab recipe nearest to its pretraining views (notebook 04's pairs)
    image_size: int = 224
    pretrained_on: str = IMAGENET
    self_supervised: bool = True
    packaged: str = ""  # a file shipped inside mocolab, relative to mocolab/weights/ (then url is "")

    @property
    def filename(self) -> str:
        return PurePosixPath(self.packaged or self.url).name

    def source_link(self, path: str) -> str:
        return f"https://github.com/{self.repo}/blob/{self.commit}/{path}"


_MOCO = "7397dfe146c7ca6bbb58e9c382498069178ba764"  # facebookresearch/moco, the last commit with the code
_MOCO_LAYOUT = (
    "main_moco.py (save_checkpoint: epoch, arch, state_dict of the DDP-wrapped MoCo module, optimizer); "
    "moco/builder.py (encoder_q / encoder_k are torchvision ResNets whose fc is the head; queue, "
    "queue_ptr)"
)
_MOCO_DET = "detection/README.md (Faster R-CNN R50-C4, VOC07+12, detectron2)"
_MOCOV3 = "c349e6e24f40d3fedb22d973f92defa4cedf37a7"
_MOCOV3_LAYOUT = (
    "main_moco.py (save_checkpoint: epoch, arch, state_dict, optimizer, scaler); moco/builder.py "
    "(MoCo_ResNet: base_encoder and momentum_encoder are torchvision ResNets whose fc is the 2-layer "
    "projector Linear-BN-ReLU-Linear-BN(affine=False); predictor)"
)
_MMSELFSUP = "6faad81607c601ef2fdccd20880fa357730c5805"  # the 0.x branch
_MMPRETRAIN = "ee7f2e88501f61aa95c742dd5f429f039935ee90"


def _entries() -> list[Published]:
    moco = [
        Published(
            "moco_v1_200ep",
            "MoCo v1, 200 epochs (official)",
            "facebookresearch/moco",
            _MOCO,
            "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar",
            "md5:b251726a",
            "moco_official",
            _MOCO_LAYOUT,
            head="linear",
            augmentation="v1",
            numbers={"linear_imagenet": {"avgpool": 60.6}, "voc_detection": {"AP50": 81.5, "AP": 55.9, "AP75": 62.6}},
            numbers_source=f"README.md (linear top-1 of the released model); {_MOCO_DET}",
        ),
        Published(
            "moco_v2_200ep",
            "MoCo v2, 200 epochs (official)",
            "facebookresearch/moco",
            _MOCO,
            "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar",
            "md5:59fd9945",
            "moco_official",
            _MOCO_LAYOUT,
            numbers={"linear_imagenet": {"avgpool": 67.7}, "voc_detection": {"AP50": 82.4, "AP": 57.0, "AP75": 63.6}},
            numbers_source=f"README.md (linear top-1 of the released model); {_MOCO_DET}",
        ),
        Published(
            "moco_v2_800ep",
            "MoCo v2, 800 epochs (official)",
            "facebookresearch/moco",
            _MOCO,
            "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
            "md5:a04e12f8",
            "moco_official",
            _MOCO_LAYOUT,
            epochs=800,
            numbers={"linear_imagenet": {"avgpool": 71.1}, "voc_detection": {"AP50": 82.5, "AP": 57.4, "AP75": 64.0}},
            numbers_source=f"README.md (linear top-1 of the released model); {_MOCO_DET}",
        ),
    ]
    openmmlab = [
        Published(
            "mmselfsup_mocov2_200ep",
            "MoCo v2, 200 epochs (MMSelfSup 0.x; the reference page's model)",
            "open-mmlab/mmselfsup",
            _MMSELFSUP,
            "https://download.openmmlab.com/mmselfsup/moco/mocov2_resnet50_8xb32-coslr-200e_in1k_20220225-89e03af4.pth",
            "sha256:89e03af4",
            "openmmlab",
            "mmselfsup/models/algorithms/moco.py (encoder_q = Sequential(backbone, neck), also registered as "
            "backbone and neck; encoder_k; queue, queue_ptr); mmselfsup/models/necks/mocov2_neck.py (mlp = "
            "Linear-ReLU-Linear); tools/model_converters/publish_model.py (drops optimizer, keeps meta, "
            "saves in torch's pre-1.6 format, names the file by its sha256)",
            numbers={**{k: dict(v) for k, v in EVALUATION.items()}, **{k: dict(v) for k, v in TRANSFER.items()}},
            numbers_source="configs/selfsup/mocov2/README.md (every benchmark of the reference page)",
        ),
        Published(
            "mmpretrain_mocov2_200ep",
            "MoCo v2, 200 epochs (MMSelfSup 1.x / mmpretrain)",
            "open-mmlab/mmpretrain",
            _MMPRETRAIN,
            "https://download.openmmlab.com/mmselfsup/1.x/mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k/"
            "mocov2_resnet50_8xb32-coslr-200e_in1k_20220825-b6d23c86.pth",
            "sha256:b6d23c86",
            "openmmlab",
            "mmpretrain/models/selfsup/base.py (backbone, neck, head); mmpretrain/models/selfsup/moco.py "
            "(encoder_k = ExponentialMovingAverage(Sequential(backbone, neck)), queue, queue_ptr); "
            "mmpretrain/models/backbones/resnet.py (torchvision's key names: bn1, downsample.0/1)",
            numbers={"linear_imagenet": {"avgpool": 67.5}},
            numbers_source="configs/mocov2/README.md and metafile.yml (linear evaluation, 100 epochs)",
        ),
    ]
    mocov3 = [
        Published(
            f"mocov3_r50_{epochs}ep",
            f"MoCo v3 ResNet-50, {epochs} epochs (official)",
            "facebookresearch/moco-v3",
            _MOCOV3,
            f"https://dl.fbaipublicfiles.com/moco-v3/r-50-{epochs}ep/r-50-{epochs}ep.pth.tar",
            None,
            "mocov3_official",
            _MOCOV3_LAYOUT,
            epochs=epochs,
            head="mocov3",
            numbers={"linear_imagenet": {"avgpool": top1}},
            numbers_source="README.md (ResNet-50, linear classification) and CONFIG.md (download links)",
        )
        for epochs, top1 in ((100, 68.9), (300, 72.8), (1000, 74.6))
    ]
    others = [
        Published(
            "dino_r50",
            "DINO ResNet-50, 800 epochs (official, backbone only)",
            "facebookresearch/dino",
            "7c446df5b9f45747937fb0d72314eb9f7b66930a",
            "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
            None,
            "torchvision",
            "hubconf.py (dino_resnet50: a torchvision resnet50 with fc = Identity loads the file with strict=False)",
            epochs=800,
            head=None,
            numbers={"knn_imagenet": {20: 67.5}, "linear_imagenet": {"avgpool": 75.3}},
            numbers_source="README.md (pretrained models: k-NN and linear top-1)",
        ),
        Published(
            "barlowtwins_r50",
            "Barlow Twins ResNet-50, 1000 epochs (official, backbone only)",
            "facebookresearch/barlowtwins",
            "8e8d284ca0bc02f88b92328e53f9b901e86b4a3c",
            "https://dl.fbaipublicfiles.com/barlowtwins/ljng/resnet50.pth",
            None,
            "torchvision",
            "hubconf.py (resnet50: torchvision's resnet50 loads the file with strict=False; no fc)",
            epochs=1000,
            head=None,
            numbers={"linear_imagenet": {"avgpool": 73.5}},
            numbers_source="README.md (pretrained model: acc1 73.5, acc5 91.0)",
        ),
    ]
    supervised = [
        Published(
            f"torchvision_r50_{version.lower()}",
            f"Supervised ResNet-50, torchvision IMAGENET1K_{version}",
            "pytorch/vision",
            "v0.29.1",
            f"https://download.pytorch.org/models/resnet50-{digest}.pth",
            f"sha256:{digest}",
            "torchvision",
            "torchvision/models/resnet.py (ResNet50_Weights: the file is resnet50().state_dict(), its "
            "name ends in its sha256 prefix, which torch.hub checks)",
            epochs=epochs,
            head=None,
            pretrained_on="ImageNet-1k train, with labels (supervised)",
            self_supervised=False,
            numbers={"imagenet_classifier": {"top1": top1}},
            numbers_source="torchvision/models/resnet.py (ResNet50_Weights meta: acc@1 of its own classifier, "
            "trained end to end; not a linear probe)",
        )
        for version, digest, epochs, top1 in (("V1", "0676ba61", 90, 76.13), ("V2", "11ad3fa6", 600, 80.858))
    ]
    teaching = [
        Published(
            "teaching_cifar10",
            "mocolab's teaching checkpoint (shipped with mocolab): cifar10_cpu recipe, 60 epochs on CIFAR-10",
            "",
            "eafe692474abc1dec7befdd5b56b85d7f5e3a37c",  # the mocolab commit that trained it
            "",
            "sha256:b2a0b43d",
            "mocolab",
            "mocolab/weights/teaching.py (compact: the query encoder of a pretraining checkpoint, fp16, with "
            "its config and history)",
            numbers_source="mocolab/weights/teaching/metrics.csv (the kNN monitor of every epoch); "
            "docs/workshop.md (kNN and SVMs against a random network)",
            epochs=60,
            arch="resnet10_w16",
            head="linear",
            augmentation="cifar",
            image_size=32,
            pretrained_on="CIFAR-10 train (50,000 images), no labels used",
            packaged="teaching/cifar10_resnet10_w16.pt",
        )
    ]
    return moco + openmmlab + mocov3 + others + supervised + teaching


REGISTRY: dict[str, Published] = {entry.name: entry for entry in _entries()}


def entry(name: str) -> Published:
    """The registry entry called `name`, or a KeyError that lists the names."""
    if name not in REGISTRY:
        raise KeyError(f"no published checkpoint called {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]
