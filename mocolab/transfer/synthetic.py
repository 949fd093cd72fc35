"""Generated scenes in the real VOC layout, for showing the transfer machinery without VOC on disk.

A demonstration of the mechanics, not a benchmark: notebook 05 with `data =
"synthetic"` fine-tunes on these images and draws its predicted boxes or masks
in about a minute on a CPU. Each scene is a noisy background with one to three
objects, apart from each other, of three VOC classes, each class a shape and colour of its own (cat: a
red disc, dog: a blue square, car: a green wide rectangle). The files follow the
VOCdevkit layout that `transfer.datasets` reads, written as the real one is:

    VOC2007/JPEGImages/*.jpg, Annotations/*.xml, ImageSets/Main/{trainval,test}.txt
    VOC2012/JPEGImages/*.jpg, SegmentationClass/*.png (VOC's palette, 255 on object borders),
            ImageSets/Segmentation/{train,val,aug}.txt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..evaluate.voc import VOC_CLASSES
from ..settings import ConfigError

SHAPES = {"cat": ((220, 60, 50), "disc"), "dog": ((50, 80, 220), "square"), "car": ((40, 170, 60), "wide")}
SIZE = (160, 120)  # width, height


def voc_palette() -> list[int]:
    """VOC's colour map, 256 RGB triples: label i spreads its bits over the high bits of r, g, b, 3 at a time."""
    palette = []
    for label in range(256):
        r = g = b = 0
        for shift in range(7, -1, -1):
            r |= (label >> 0 & 1) << shift
            g |= (label >> 1 & 1) << shift
            b |= (label >> 2 & 1) << shift
            label >>= 3
        palette += [r, g, b]
    return palette


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]], np.ndarray]:
    """(pixels H x W x 3, [(class, (x1, y1, x2, y2)) in VOC's 1-based pixel convention], class mask H x W)."""
    width, height = SIZE
    pixels = rng.integers(70, 130, (height, width, 3)).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    objects = []
    for _ in range(rng.integers(1, 4)):
        name = list(SHAPES)[rng.integers(len(SHAPES))]
        colour, shape = SHAPES[name]
        w = int(rng.integers(30, 55)) * (2 if shape == "wide" else 1)
        h = w // 2 if shape == "wide" else w
        w, h = min(w, width - 4), min(h, height - 4)
        for _ in range(20):  # objects do not overlap, so every box shows its whole object
            x0, y0 = int(rng.integers(2, width - w - 1)), int(rng.integers(2, height - h - 1))
            if all(x0 > b[2] + 2 or x0 + w < b[0] - 2 or y0 > b[3] + 2 or y0 + h < b[1] - 2 for _, b in objects):
                break
        else:
            continue
        if shape == "disc":
            inside = ((xs - x0 - w / 2) / (w / 2)) ** 2 + ((ys - y0 - h / 2) / (h / 2)) ** 2 <= 1
        else:
            inside = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
        pixels[inside] = colour
        mask[inside] = VOC_CLASSES.index(name) + 1
        objects.append((name, (x0 + 1, y0 + 1, x0 + w, y0 + h)))
    padded = np.pad(mask, 1, mode="edge")
    border = (padded[2:, 1:-1] != mask) | (padded[1:-1, 2:] != mask)  # VOC marks object outlines 255 (ignored)
    mask[border] = 255
    return pixels, objects, mask


def write_voc(root: str | Path, n_images: int = 24, test_images: int = 8, seed: int = 0) -> Path:
    """Write `n_images` generated scenes as VOC2007 (detection) and VOC2012 (segmentation) under `root`.

    The last `test_images` are the test split (VOC2007 test, VOC2012 val). Returns `root`.
    """
    if not 0 < test_images < n_images:
        raise ValueError(f"test_images must be between 1 and n_images - 1, got {test_images} of {n_images}")
    root = Path(root)
    detection, segmentation = root / "VOC2007", root / "VOC2012"
    for folder in (
        detection / "JPEGImages",
        detection / "Annotations",
        detection / "ImageSets" / "Main",
        segmentation / "JPEGImages",
        segmentation / "SegmentationClass",
        segmentation / "ImageSets" / "Segmentation",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"{i:06d}" for i in range(n_images)]
    for image_id in ids:
        pixels, objects, mask = _scene(rng)
        for base in (detection, segmentation):
            Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
        xml = [
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{SIZE[0]}</width>"
            f"<height>{SIZE[1]}</height><depth>3</depth></size>"
        ]
        for name, (x1, y1, x2, y2) in objects:
            xml.append(
                f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
                f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            )
        (detection / "Annotations" / f"{image_id}.xml").write_text("".join(xml) + "</annotation>")
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_palette())
        png.save(segmentation / "SegmentationClass" / f"{image_id}.png")
    train, test = ids[:-test_images], ids[-test_images:]
    for folder, lists in (
        (detection / "ImageSets" / "Main", {"trainval": train, "test": test}),
        (segmentation / "ImageSets" / "Segmentation", {"train": train, "val": test, "aug": train}),
    ):  # aug.txt: SBD's list, here none new
        for split, names in lists.items():
            (folder / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def dataset_for(task: str, root: str | Path) -> tuple[str, str]:
    """(data_root, train_sets) for a transfer task on generated scenes written under `root` (notebook 05)."""
    if task not in ("voc_detection", "voc_segmentation"):
        raise ConfigError(
            f"data='synthetic' generates the VOC layout, not {task!r}: choose task='voc_detection' "
            f"or 'voc_segmentation', or data='real' with the dataset's root"
        )
    return str(write_voc(root)), "2007/trainval"
