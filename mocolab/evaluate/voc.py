"""PASCAL VOC2007 classification targets from the standard VOCdevkit layout.

    <root>/VOC2007/ImageSets/Main/<split>.txt            image ids of the split
    <root>/VOC2007/ImageSets/Main/<class>_<split>.txt    "<id> 1" present, "-1" absent, "0" difficult only
    <root>/VOC2007/JPEGImages/<id>.jpg

Targets per image and class follow the benchmark: present 1, absent 0,
difficult only -1 (docs/protocols.md section 2, "VOC07 SVM").
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..augment import IMAGENET_MEAN, IMAGENET_STD
from ..data import DatasetError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_FILE_VALUE_TO_TARGET = {1: 1, -1: 0, 0: -1}


def voc_svm_transform(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Short side to 256, then squashed to 224 x 224 (no crop); the encoder's normalisation (ImageNet's)."""
    return v2.Compose(
        [
            v2.Resize(round(size * 256 / 224)),
            v2.Resize((size, size)),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


class VOC07Classification(Dataset):
    """Items (image, targets): targets is a LongTensor of 20 values in {1, 0, -1}."""

    classes = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "trainval", transform=None):
        root = Path(root)
        self.root = root / "VOC2007" if (root / "VOC2007").is_dir() else root
        self.transform = transform
        main = self.root / "ImageSets" / "Main"
        split_file = main / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(
                f"no {split_file}: expected a VOCdevkit tree with VOC2007/ImageSets/Main/"
                f"{split}.txt, <class>_{split}.txt and JPEGImages/"
            )
        self.ids = split_file.read_text().split()
        if not self.ids:
            raise DatasetError(f"{split_file} lists no images: the {split} split is empty")
        position = {image_id: i for i, image_id in enumerate(self.ids)}
        self.targets = torch.full((len(self.ids), len(VOC_CLASSES)), -2, dtype=torch.long)
        for c, name in enumerate(VOC_CLASSES):
            path = main / f"{name}_{split}.txt"
            if not path.is_file():
                raise DatasetError(f"missing class file {path}")
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                image_id, value = line.split()
                if image_id not in position:
                    raise DatasetError(f"{path} names image {image_id}, which {split_file} does not list")
                self.targets[position[image_id], c] = _FILE_VALUE_TO_TARGET[int(value)]
            unset = (self.targets[:, c] == -2).nonzero().flatten()
            if len(unset):
                raise DatasetError(
                    f"{path} has no line for {len(unset)} image(s) of {split_file}, "
                    f"e.g. {self.ids[unset[0]]}: the class file does not match the split"
                )
        missing = [i for i in self.ids if not (self.root / "JPEGImages" / f"{i}.jpg").is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} image(s) of {split_file} are not in {self.root / 'JPEGImages'}, e.g. {missing[0]}.jpg"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = Image.open(self.root / "JPEGImages" / f"{self.ids[index]}.jpg").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]
