"""The fine-tuning data order: an endless, seeded stream of training images, dealt out by iteration.

Detection and segmentation schedules count iterations, not epochs (24k; 87,960
for COCO's 12 epochs; 20k), as detectron2's TrainingSampler and MMSegmentation's
IterBasedRunner do.
Here position p of the stream is image `order(p)` of the dataset (a fresh
permutation every pass, drawn from (seed, pass)), and its random augmentation
(flip, rescale, crop) is drawn from (seed, p). Iteration i takes positions
i*B .. (i+1)*B - 1 of the stream, rank r of W the r-th slice of B/W of them.

So what an iteration sees depends on (seed, i) alone: W processes together
see the global batch one process would, whatever the number of loader workers,
and a run resumed at iteration i continues exactly where it stopped.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..run.seeding import derive_seed, generator, seeded


class SeededStream(Dataset):
    """Index p -> the (image, target) at position p of the stream."""

    def __init__(self, dataset: Dataset, seed: int):
        if len(dataset) == 0:
            raise ValueError("the training set is empty")
        self.dataset, self.seed = dataset, seed
        self._pass, self._order = -1, None

    def __len__(self):  # one pass; the stream itself never ends
        return len(self.dataset)

    def index(self, p: int) -> int:
        """The dataset index at stream position p."""
        n = len(self.dataset)
        epoch, i = divmod(p, n)
        if epoch != self._pass:  # cached: consecutive positions share a pass
            order = torch.randperm(n, generator=generator(self.seed, "stream order", epoch))
            self._pass, self._order = epoch, order.tolist()
        return self._order[i]

    def __getitem__(self, p: int):
        index = self.index(p)
        with seeded(self.seed, "stream views", p):  # the augmentation's draws, leaving the caller's RNG untouched
            return self.dataset[index]


class IterationBatches:
    """A DataLoader batch_sampler: this rank's stream positions for iterations start .. iterations - 1."""

    def __init__(self, batch_size: int, start: int, iterations: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size={batch_size} does not split evenly over {world} processes")
        self.batch_size, self.start, self.iterations = batch_size, start, iterations
        self.per_rank, self.rank = batch_size // world, rank

    def __len__(self):
        return max(0, self.iterations - self.start)

    def __iter__(self):
        for it in range(self.start, self.iterations):
            first = it * self.batch_size + self.rank * self.per_rank
            yield list(range(first, first + self.per_rank))


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """The seed of the model's own draws in one iteration (multi-scale size, RPN and RoI sampling)."""
    return derive_seed(seed, "model draws", iteration, rank)
