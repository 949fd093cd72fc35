"""Functions run inside spawned gloo processes by tests/test_distributed.py (importable by name)."""

import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mocolab import MoCo, build_encoder
from mocolab import distributed as dist_


def init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def check_shuffle_and_queue(rank: int, world: int, port: int) -> None:
    init(rank, world, port)
    B = 4
    x = (rank * B + torch.arange(B)).float().view(B, 1).repeat(1, 3)  # rows: global indices
    shuffled, unshuffle = dist_.batch_shuffle(x)
    everything = dist_.all_gather_cat(shuffled)[:, 0].long()
    assert sorted(everything.tolist()) == list(range(world * B)), everything  # a permutation
    assert not torch.equal(everything, torch.arange(world * B))
    assert torch.equal(dist_.batch_unshuffle(shuffled, unshuffle), x)  # each rank gets its own rows back

    torch.manual_seed(0)  # identical models and queues on every rank
    enc = build_encoder("resnet18", cifar_stem=True, head="linear", dim=8, bn_splits=1)
    model = MoCo(enc, K=4 * world * B, m=0.9, T=0.1, dim=8, shuffle_bn=False)
    torch.manual_seed(100 + rank)  # but different images
    x_q, x_k = torch.randn(B, 3, 8, 8), torch.randn(B, 3, 8, 8)
    model(x_q, x_k)
    # This rank's keys, computed again as the step computed them: the key encoder (after its momentum
    # update) in train mode on x_k (no shuffle BN here). The same operations on the same tensors in the
    # same thread count: bit-identical. (The query encoder is no stand-in: m * w + (1 - m) * w rounds
    # differently from w, and train-mode BN over 4 values amplifies that to 2.6e-5, measured over 40
    # input seeds, so a 1e-5 tolerance passed or failed by chance.)
    with torch.no_grad():
        expected = F.normalize(model.encoder_k(x_k), dim=1)
    queues = dist_.all_gather_cat(model.queue.keys[None])
    assert torch.equal(queues[0], queues[-1])  # every rank holds the same queue
    assert model.queue.ptr.item() == world * B  # moved by the global batch
    # Slots 0 .. W*B hold the keys of the global batch in rank order, exactly.
    assert torch.equal(model.queue.keys[: world * B], dist_.all_gather_cat(expected))
    dist.destroy_process_group()


def fail_on_rank_1(config: dict) -> None:
    """Rank 1 raises at once; rank 0 waits in a collective that can never complete."""
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise RuntimeError("worker 1 failed on purpose")
    dist.barrier()
    time.sleep(600)


class NoisyDetector(torch.nn.Module):
    """Detections made from the ground truth: boxes shifted by 7 px per image index (so the last ones
    miss at IoU 0.5), scores falling with the index, and one false positive per image, ranked first
    on odd images: AP is neither 0 nor 100."""

    def __init__(self, dataset):
        super().__init__()
        self.targets = {round(dataset[i][0].sum().item(), 2): (i, dataset[i][1]) for i in range(len(dataset))}

    def forward(self, images):
        i, target = self.targets[round(images[0].sum().item(), 2)]
        boxes = target["boxes"] + torch.tensor([7.0 * i, 0, 7.0 * i, 0])
        boxes = torch.cat([boxes, torch.tensor([[0.0, 0, 30, 30]])])
        labels = torch.cat([target["labels"], target["labels"][:1]])
        scores = torch.linspace(0.9, 0.5, len(boxes)) - 0.05 * i
        if i % 2:
            scores[-1] = 0.99
        return [{"boxes": boxes, "labels": labels, "scores": scores}]


def check_sharded_voc_evaluation(rank: int, world: int, port: int, root: str, expected: dict) -> None:
    from mocolab.transfer import finetune
    from mocolab.transfer.datasets import VOCDetection

    init(rank, world, port)
    dataset = VOCDetection(root, sets=(("2007", "test"),), keep_difficult=True)
    model = NoisyDetector(dataset)
    assert list(finetune.shard(len(dataset))) == list(range(rank, len(dataset), world))
    got = finetune.evaluate_voc_detection(model, dataset)
    for key in ("AP", "AP50", "AP75"):
        assert abs(got[key] - expected[key]) < 1e-9, (key, got[key], expected[key])
    dist.destroy_process_group()
