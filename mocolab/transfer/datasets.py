"""Transfer datasets in their real on-disk formats.

- `VOCDetection`: VOCdevkit/VOC20xx/{Annotations/<id>.xml, JPEGImages/<id>.jpg,
  ImageSets/Main/<split>.txt}; several (year, split) sets chained, e.g. the
  07+12 trainval of the protocol. Boxes follow detectron2's loader: the XML's
  1-based xmin, ymin minus 1, xmax, ymax as they are.
- `VOCSegmentation`: VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
  ImageSets/Segmentation/<split>.txt}, plus SBD's augmented set as
  MMSegmentation lays it out (SegmentationClassAug/<id>.png and
  ImageSets/Segmentation/aug.txt). Masks are palette PNGs of class indices,
  255 = ignore.

Images come as float tensors in [0, 1] (3 x H x W), the input torchvision's
detection models normalise themselves.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..data import DatasetError
from ..evaluate.voc import VOC_CLASSES
from . import seg_transforms


def _read_ids(path: Path, layout: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; {layout}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _image(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return TF.to_dtype(TF.pil_to_tensor(im.convert("RGB")), torch.float32, scale=True)


class VOCDetection(Dataset):
    """(image, target) with target boxes (K x 4 float), labels (1..20; 0 is the background), difficult."""

    LAYOUT = (
        "expected <root>/VOC<year>/Annotations/<id>.xml, JPEGImages/<id>.jpg and "
        "ImageSets/Main/<split>.txt (the VOCdevkit layout); set root to the VOCdevkit folder"
    )

    def __init__(
        self, root, sets=(("2007", "trainval"), ("2012", "trainval")), keep_difficult: bool = False, flip: bool = False
    ):
        self.root, self.keep_difficult, self.flip = Path(root), keep_difficult, flip
        self.items = [
            (year, i)
            for year, split in sets
            for i in _read_ids(self.root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt", self.LAYOUT)
        ]
        self.classes = list(VOC_CLASSES)

    def __len__(self):
        return len(self.items)

    def annotation(self, index: int) -> dict:
        """The objects of one image as the XML says: names, boxes (file coordinates), difficult."""
        year, image_id = self.items[index]
        path = self.root / f"VOC{year}" / "Annotations" / f"{image_id}.xml"
        if not path.is_file():
            raise DatasetError(f"{path} is missing; {self.LAYOUT}")
        boxes, labels, difficult = [], [], []
        for obj in ET.parse(path).findall("object"):
            name = obj.findtext("name").strip()
            if name not in VOC_CLASSES:
                raise DatasetError(f"{path}: object class {name!r} is not one of the 20 VOC classes")
            hard = int(obj.findtext("difficult") or 0) == 1
            if hard and not self.keep_difficult:
                continue
            b = obj.find("bndbox")
            boxes.append([float(b.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(VOC_CLASSES.index(name) + 1)
            difficult.append(hard)
        return {
            "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(labels, np.int64),
            "difficult": np.array(difficult, bool),
            "image_id": f"{year}_{image_id}",
        }

    def __getitem__(self, index: int):
        year, image_id = self.items[index]
        image = _image(self.root / f"VOC{year}" / "JPEGImages" / f"{image_id}.jpg")
        ann = self.annotation(index)
        boxes = torch.from_numpy(ann["boxes"]).clone()
        boxes[:, :2] -= 1  # detectron2: 0-based corners; evaluation adds 1 back
        if self.flip and torch.rand(1).item() < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = image.shape[-1] - boxes[:, [2, 0]]
        return image, {
            "boxes": boxes,
            "labels": torch.from_numpy(ann["labels"]),
            "difficult": torch.from_numpy(ann["difficult"]),
            "image_id": ann["image_id"],
        }


class VOCSegmentation(Dataset):
    """(image, mask) pairs of VOC2012 (+ SBD's augmented set): mask H x W int64, 255 = ignore.

    crop: training samples through the reference's pipeline (seg_transforms.train_view: rescale by `scale`,
    crop, flip, photometric distortion, pad). test_scale: the image rescaled to that short side (long side at
    most 4x), the mask left at the original size, where the prediction is scored (seg_transforms.eval_view).
    augmented: the reference's "VOC12 + aug" training set, train.txt's images with their SegmentationClass
    masks followed by aug.txt's with their SegmentationClassAug masks, as MMSegmentation concatenates the two
    lists (the VOC train images that aug.txt lists again are seen twice an epoch, as there).
    """

    LAYOUT = (
        "expected <root>/VOC2012/JPEGImages/<id>.jpg, SegmentationClass/<id>.png (and, for the "
        "augmented set, SegmentationClassAug/<id>.png) and ImageSets/Segmentation/<split>.txt "
        "(aug.txt for SBD); set root to the VOCdevkit folder"
    )
    FOLDERS = ("SegmentationClass", "SegmentationClassAug")

    def __init__(
        self,
        root,
        split: str = "train",
        augmented: bool = False,
        crop: int | None = None,
        scale=(0.5, 2.0),
        flip: bool = False,
        distort: bool = True,
        test_scale: int | None = None,
    ):
        self.base = Path(root) / "VOC2012"
        lists = self.base / "ImageSets" / "Segmentation"
        self.items = [(i, self.FOLDERS) for i in _read_ids(lists / f"{split}.txt", self.LAYOUT)]
        if augmented:  # the protocol's "VOC12 + aug": SBD's masks first for aug.txt's images
            self.items += [(i, self.FOLDERS[::-1]) for i in _read_ids(lists / "aug.txt", self.LAYOUT)]
        self.crop, self.scale, self.flip, self.distort, self.test_scale = crop, scale, flip, distort, test_scale
        self.classes = ["background", *VOC_CLASSES]

    def __len__(self):
        return len(self.items)

    def mask(self, index: int) -> torch.Tensor:
        image_id, folders = self.items[index]
        for folder in folders:
            path = self.base / folder / f"{image_id}.png"
            if path.is_file():
                with Image.open(path) as m:
                    mask = torch.from_numpy(np.array(m, dtype=np.int64))
                bad = ~(((mask >= 0) & (mask < 21)) | (mask == 255))
                if bad.any():
                    raise DatasetError(
                        f"{path} holds label {int(mask[bad][0])}: VOC masks are class indices "
                        f"0-20 and 255 (ignore), saved as palette PNGs"
                    )
                return mask
        raise DatasetError(f"no mask for {image_id} in {self.base}; {self.LAYOUT}")

    def __getitem__(self, index: int):
        image = _image(self.base / "JPEGImages" / f"{self.items[index][0]}.jpg")
        mask = self.mask(index)
        if self.crop:
            return seg_transforms.train_view(image, mask, self.crop, self.scale, flip=self.flip, distort=self.distort)
        if self.test_scale:
            image = seg_transforms.eval_view(image, self.test_scale)
        elif self.flip and torch.rand(1).item() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask


class COCODetection(Dataset):
    """COCO instances through pycocotools: (image, target) with boxes (x1 y1 x2 y2), labels 1..C in the
    order of the JSON's categories, and binary masks (K x H x W); crowd regions are left out.

    images: the folder of the split's images (train2017/); annotations: instances_<split>.json.
    skip_empty: leave out images without any annotation (crowd ones count) or with a side under 32 pixels, as
    mmdet's CocoDataset does for training (filter_empty_gt): 117,266 of train2017's 118,287 images remain.
    """

    def __init__(self, images, annotations, flip: bool = False, skip_empty: bool = False):
        from pycocotools.coco import COCO

        self.images, self.flip = Path(images), flip
        if not Path(annotations).is_file():
            raise DatasetError(f"{annotations} is missing: expected COCO's annotations/instances_<split>.json")
        if not self.images.is_dir():
            raise DatasetError(f"{self.images} is missing: expected the split's image folder (e.g. train2017/)")
        self.coco = COCO(str(annotations))
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}  # 0 is the background
        self.classes = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.ids = sorted(self.coco.getImgIds())
        if skip_empty:
            annotated = {ann["image_id"] for ann in self.coco.anns.values()}
            self.ids = [
                i
                for i in self.ids
                if i in annotated and min(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) >= 32
            ]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = _image(self.images / info["file_name"])
        boxes, labels, masks = [], [], []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            if ann["category_id"] not in self.label_of:
                raise DatasetError(
                    f"annotation {ann['id']} names category {ann['category_id']}, "
                    f"which the JSON's categories do not list"
                )
            x, y, w, h = ann["bbox"]
            if w < 1 or h < 1:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann["category_id"]])
            masks.append(self.coco.annToMask(ann))
        h, w = image.shape[-2:]
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.uint8),
            "image_id": image_id,
        }
        if self.flip and torch.rand(1).item() < 0.5:
            image, target["masks"] = image.flip(-1), target["masks"].flip(-1)
            target["boxes"][:, [0, 2]] = w - target["boxes"][:, [2, 0]]
        return image, target
