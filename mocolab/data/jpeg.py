"""ImageNet-scale folders on the fast path: workers read JPEG bytes, the device decodes and augments.

Loader workers only read files (no decoding, no PIL), so a few of them keep up
with a GPU; `torchvision.io.decode_jpeg` decodes the batch on the training
device (nvJPEG on a GPU), and augment.batched crops, resizes and colours it there.
Files that are not JPEGs (PNG, ...) are decoded on the CPU by
`torchvision.io.decode_image` and joined to the batch.

Order and draws follow the other paths: the shared epoch order
(loader.epoch_order), and per-step random draws seeded by (seed, epoch, step, rank).
"""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode

from ..run import seeding
from ..augment import Recipe, batched, recipe
from ..run import unreadable
from .datasets import DatasetError, check_signatures, load_split, spec, subset_indices
from ..run.workers import loader_processes
from .loader import check_enough_images, epoch_indices

if TYPE_CHECKING:  # annotations only: the config imports the dataset table (SPECS) from here
    from ..config import Config


class FileBytes(Dataset):
    """(file bytes as a uint8 tensor, label, index) of every image of an ImageFolder-like dataset.

    An empty file or one that is not an image (no image signature: a cheap check, no
    decoding) is reported once (unreadable.report) and the next file is served instead,
    as the `cpu` path's SkipCorruptImageFolder does.
    """

    max_consecutive_failures = 100

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        for attempt in range(self.max_consecutive_failures):
            i = (index + attempt) % len(self.samples)
            path, label = self.samples[i]
            data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))  # not torchvision's read_file: it takes
            # no file name that is not UTF-8
            why = unreadable.looks_like_an_image(data[:16].numpy().tobytes())
            # The header's size, before torchvision decodes it (it has no bomb guard): in the worker, ~30 us.
            why = why or unreadable.header_problem(io.BytesIO(data.numpy().tobytes()))
            if why is None:
                return data, label, i
            unreadable.report(path, why)
        raise DatasetError(
            f"{self.max_consecutive_failures} consecutive unreadable images from "
            f"{self.samples[index][0]} on: is the folder corrupt?"
        )


def _collate(batch):
    """One byte buffer and the files' offsets in it: a single tensor crosses from the worker (many small
    ones would each need a file descriptor) and is pinned in one piece."""
    lengths = torch.tensor([0] + [len(data) for data, _, _ in batch])
    return (
        torch.cat([data for data, _, _ in batch]),
        lengths.cumsum(0),
        torch.as_tensor([y for _, y, _ in batch]),
        torch.as_tensor([i for _, _, i in batch]),
    )


def split_buffer(buffer: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    bounds = offsets.tolist()
    return [buffer[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 2 and data[0].item() == 0xFF and data[1].item() == 0xD8


def decode(data: list[torch.Tensor], device, name=None) -> list[torch.Tensor]:
    """RGB uint8 images (3 x H x W each, on `device`) from encoded files; JPEGs decoded on the device.

    When the batch decoder refuses the batch (a truncated JPEG, say), each file is
    decoded alone: by decode_jpeg, else by PIL on the CPU (which reads some files
    nvJPEG refuses); a file neither can read is reported (by its path, name(i)) and
    replaced by the batch's previous readable image, so the batch keeps its size.
    """
    device = torch.device(device)
    jpegs = [i for i, d in enumerate(data) if is_jpeg(d)]
    out = [None] * len(data)
    try:
        if jpegs:
            for i, image in zip(
                jpegs, torchvision.io.decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            ):
                out[i] = image
        for i, d in enumerate(data):
            if out[i] is None:
                out[i] = torchvision.io.decode_image(d, mode=ImageReadMode.RGB).to(device)
    except RuntimeError:
        out = [_decode_one(d, device, name(i) if name else f"image {i} of the batch") for i, d in enumerate(data)]
    readable = [image for image in out if image is not None]
    if not readable:
        raise DatasetError(f"no image of a batch could be decoded, e.g. {name(0) if name else 'the first'}")
    last = readable[0]
    for i, image in enumerate(out):
        out[i] = last = image if image is not None else last
    return out


def _decode_one(data: torch.Tensor, device, path) -> torch.Tensor | None:
    """One file: torchvision's decoder, else PIL's on the CPU, else None (reported once)."""
    try:
        if is_jpeg(data):
            return torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return torchvision.io.decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as torch_error:
        try:
            array = np.array(unreadable.open_rgb(io.BytesIO(data.numpy().tobytes())))
            return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(device)
        except (OSError, ValueError, SyntaxError) as pil_error:
            unreadable.report(path, f"{torch_error}; PIL: {pil_error}")
            return None


# None: the crops' resize weights in one batched call on a GPU, where the per-image calls' launches are the cost,
# and image by image on the CPU, where the batched call's large temporaries (N x size x the longest crop side, in
# float64) made a batch of 64 ImageNet-size views 2.2x slower (0.37 against 0.17 s). Tests force either.
BATCHED_WEIGHTS = None


def resized_crop_list(images: list[torch.Tensor], box: torch.Tensor, size: int) -> torch.Tensor:
    """batched.resized_crops for images of different sizes: one pair of matrix products each.

    `box` is on the host, where the crops are cut from it with no read back from the device. The resize weights
    are computed on the images' device from one copy of it: in one batched call over the longest crop side (a
    shorter crop's weights are zero past its own side), or crop by crop (BATCHED_WEIGHTS)."""
    top_left_h_w = box.tolist()
    device = images[0].device
    on_device = box.to(device, non_blocking=True)  # does not wait for the stream
    together = device.type == "cuda" if BATCHED_WEIGHTS is None else BATCHED_WEIGHTS
    zero = torch.zeros(len(images) if together else 1, dtype=torch.long, device=device)
    if together:
        longest_h, longest_w = max(b[2] for b in top_left_h_w), max(b[3] for b in top_left_h_w)
        all_rows = batched.resize_weights(zero, on_device[:, 2], longest_h, size)  # N x size x longest_h
        all_cols = batched.resize_weights(zero, on_device[:, 3], longest_w, size)  # N x size x longest_w
    views = []
    for i, (image, (top, left, h, w)) in enumerate(zip(images, top_left_h_w)):
        # A view, of which only the crop is converted: uint8 / int divides in float32 (.float() / 255 in one op).
        crop = image[:, top : top + h, left : left + w] / 255
        if together:
            rows, cols = all_rows[i, :, :h], all_cols[i, :, :w]
        else:
            rows = batched.resize_weights(zero, on_device[i : i + 1, 2], h, size)[0]  # size x h
            cols = batched.resize_weights(zero, on_device[i : i + 1, 3], w, size)[0]  # size x w
        views.append(rows @ crop @ cols.T)  # 3 x size x size
    return torch.stack(views)


def image_sides(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(heights, widths) of a batch's images, on the host: read off their shapes, for both views."""
    sides = torch.tensor([im.shape[-2:] for im in images])
    return sides[:, 0], sides[:, 1]


def views(images: list[torch.Tensor], r: Recipe, generator=None, sides=None, compile: bool = False) -> torch.Tensor:
    """One normalised view of each decoded image (N x 3 x size x size), with per-image random draws.

    The choices are made on the host (`generator` a CPU one), from the images' shapes: the crops are cut with
    their boxes known there, where reading boxes drawn on a GPU would wait for every kernel queued before the
    read, the previous training step's included. The device gets the choices by copies that do not wait.
    sides: image_sides(images), when the caller made them already (for the step's two views).
    compile: the flip, colour, blur and normalisation through `batched.compiled` (the crops, of images of
    different sizes, are eager)."""
    heights, widths = sides if sides is not None else image_sides(images)
    p = batched.sample_params(r, len(images), heights, widths, generator)
    crops = resized_crop_list(images, p["box"], r.size)
    # The rest of the choices to the device (the box went with the crops: finish_views does not read it).
    p = {name: value.to(crops.device, non_blocking=True) for name, value in p.items() if name != "box"}
    finish = batched.compiled(batched.finish_views, r) if compile else functools.partial(batched.finish_views, r=r)
    return finish(crops, p)


class JpegBatches:
    """The pretraining batches of one process from an image folder: ((x_q, x_k), labels) on `device`."""

    path = "jpeg"

    def __init__(self, files: FileBytes, cfg: Config, device, rank: int = 0, world: int = 1):
        check_enough_images(len(files), cfg)
        self.files, self.cfg, self.device = files, cfg, torch.device(device)
        self.rank, self.world = rank, world
        self.recipe = recipe(cfg.augmentation, cfg.image_size)
        self.compiled = batched.compiles(cfg.compile, self.device)

    def __len__(self):
        return len(self.files)

    def epoch(self, epoch: int, start: int = 0):
        for step, (buffer, offsets, labels, indices) in enumerate(self.files_of(epoch, start), start=start):
            images = self.decoded(buffer, offsets, indices)
            yield self.two_views(images, epoch, step), labels.to(self.device, non_blocking=True)

    def files_of(self, epoch: int, start: int = 0) -> DataLoader:
        """The loader of the epoch's files from step `start` on: (bytes, offsets, labels, indices) per batch, in
        the reference's order."""
        cfg = self.cfg
        return DataLoader(
            self.files,
            batch_size=cfg.batch_size // self.world,
            sampler=epoch_indices(len(self.files), cfg, epoch, self.rank, self.world, start),
            drop_last=True,
            num_workers=cfg.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            **loader_processes(cfg.workers),
        )

    def decoded(self, buffer: torch.Tensor, offsets: torch.Tensor, indices: torch.Tensor) -> list[torch.Tensor]:
        """A batch's images decoded on the device. Paths are looked up only when a file fails to decode."""
        return decode(split_buffer(buffer, offsets), self.device, lambda i: self.files.samples[int(indices[i])][0])

    def two_views(self, images: list[torch.Tensor], epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_q, x_k) of step `step`: their choices drawn from (seed, epoch, step, rank), on the host (views)."""
        generator = seeding.generator(self.cfg.seed, "device views", epoch, step, self.rank)
        sides = image_sides(images)
        return tuple(views(images, self.recipe, generator, sides, self.compiled) for _ in range(2))


def batches(cfg: Config, device, rank: int = 0, world: int = 1) -> JpegBatches:
    """The training split of an ImageFolder (its seeded subset, as the reference path's) as JpegBatches."""
    if spec(cfg.dataset).layout != "files":
        raise DatasetError(
            f"data_path='jpeg' reads an image folder; {cfg.dataset} is decoded once instead: use data_path='device'"
        )
    folder = load_split(cfg.dataset, cfg.data_root, "train", transform=None)
    idx = subset_indices(len(folder.samples), cfg.train_subset, cfg.seed, "train subset")  # the reference's subset
    samples = [folder.samples[i] for i in idx]
    check_signatures([path for path, _ in samples], folder.root)
    return JpegBatches(FileBytes(samples), cfg, device, rank, world)
