"""Fine-tuning as a job: the seeded iteration stream, DDP against one process, SyncBN, resume, bad configs."""

import dataclasses
import json
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset

import dist_workers
from mocolab.config import ConfigError
from mocolab.transfer import finetune, job
from mocolab.transfer.datasets import VOCDetection
from mocolab.transfer.models import faster_rcnn_c4
from mocolab.transfer.stream import IterationBatches, SeededStream, iteration_seed
from mocolab.transfer.tasks import TASKS
from mocolab.weights import TEACHING
from test_distributed import free_port
from test_transfer import write_voc_detection, write_voc_segmentation


class Draw(Dataset):
    """Item i: (i, a random draw), to see which item and which augmentation a stream position gets."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return i, torch.rand(1).item()


def positions(batch_size, start, iterations, world):
    return [
        [p for p in batch]
        for rank in range(world)
        for batch in IterationBatches(batch_size, start, iterations, rank, world)
    ]


# ----------------------------------------------------------------------------
# The stream
# ----------------------------------------------------------------------------


def test_the_stream_deals_each_iteration_the_same_global_batch_whatever_the_processes():
    one = positions(4, 0, 3, 1)
    two = [IterationBatches(4, 0, 3, r, 2) for r in range(2)]
    for it, (a, b) in enumerate(zip(*two)):
        assert a + b == one[it] == list(range(4 * it, 4 * it + 4))  # rank 0's half, then rank 1's
    assert positions(4, 2, 3, 1) == [one[2]]  # a resumed loader starts at its iteration
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        IterationBatches(4, 0, 1, 0, 3)


def test_every_pass_is_a_permutation_and_draws_depend_on_the_position_alone():
    stream = SeededStream(Draw(), seed=1)
    first, second = [stream.index(p) for p in range(5)], [stream.index(p) for p in range(5, 10)]
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    torch.manual_seed(123)
    forward = [stream[p] for p in range(10)]
    outside = torch.rand(1)
    torch.manual_seed(123)
    backward = [SeededStream(Draw(), seed=1)[p] for p in reversed(range(10))][::-1]
    assert forward == backward  # same item and same draw, in whatever order the positions are read
    assert torch.equal(torch.rand(1), outside)  # the caller's RNG is untouched
    assert SeededStream(Draw(), seed=2)[0] != forward[0]
    workers = [
        x
        for batch in DataLoader(stream, batch_sampler=IterationBatches(2, 0, 5), num_workers=2)
        for x in zip(*[t.tolist() for t in batch])
    ]
    assert [(i, pytest.approx(d)) for i, d in forward] == workers


# ----------------------------------------------------------------------------
# DDP and SyncBN
# ----------------------------------------------------------------------------


def seg_config(root, out, **kw):
    return dict(
        task="voc_segmentation",
        data_root=str(root),
        preset="tiny",
        iterations=4,
        crop=48,
        gpus=0,
        workers=0,
        log_every=1,
        output_dir=str(out),
        **kw,
    )


@pytest.mark.slow
def test_two_processes_take_the_step_of_one_averaging_their_halves(tmp_path):
    """torchrun, 2 gloo processes, 1 image each: the weights after 4 SGD steps equal one process's,
    computing each half of the global batch with its own BN statistics (per-process BN: SyncBatchNorm
    needs GPUs) and the same random draws, and averaging the two losses."""
    root = write_voc_segmentation(tmp_path / "VOCdevkit")
    overrides = seg_config(root, tmp_path / "ddp", sync_bn=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "mocolab.transfer",
            *(f"{k}={v}" for k, v in overrides.items()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = job.load_transfer_run(tmp_path / "ddp")
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["processes"] == 2
    assert [r["iteration"] for r in ddp.rows] == [1, 2, 3, 4] and "iteration 4/4" in result.stdout

    cfg = job.make_transfer_config(**seg_config(root, tmp_path / "one"))
    train_set, test_set = job.datasets(cfg)
    torch.manual_seed(cfg.seed)
    model = job.build_model(cfg, 21)
    iterations = count()

    def two_halves(model, batch, device):
        it, (images, masks), total = next(iterations), batch, 0
        for rank in range(2):
            torch.manual_seed(iteration_seed(cfg.seed, it, rank))  # the rank's dropout draws
            loss, _ = finetune.segmentation_step(model, (images[rank : rank + 1], masks[rank : rank + 1]), device)
            total = total + loss / 2
        return total, {}

    # torchrun runs each process with OMP_NUM_THREADS=1. A random FCN with BN over one 48 px image
    # amplifies the summation order of multi-threaded kernels to ~1% of a step, so use one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = finetune.train(
            model, two_halves, train_set, cfg.schedule, log_every=1, workers=0, progress=lambda _: None
        )
    finally:
        torch.set_num_threads(threads)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ddp.rows], rel=1e-4)
    one = dict(model.named_parameters())
    for name, p in ddp.model.named_parameters():
        torch.testing.assert_close(p, one[name], rtol=1e-4, atol=1e-5, msg=name)
    # The test set was split over the two processes; the gathered mIoU is the one-process mIoU.
    saved = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert saved["metrics"]["mIoU"] == pytest.approx(finetune.evaluate_segmentation(ddp.model, test_set)["mIoU"])
    assert saved["reference"] == {"mIoU": 67.55}


def test_sync_bn_replaces_every_batchnorm_and_keeps_the_checkpoint_keys():
    torch.manual_seed(0)
    model = faster_rcnn_c4(21)
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert bns == 53 + 1  # the stem, 16 bottlenecks of 3 BNs, 4 downsample BNs, the extra norm: all trainable
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(faster_rcnn_c4(21))
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == bns
    synced.load_state_dict(model.state_dict())  # a plain model's checkpoint loads, and the other way round
    plain = faster_rcnn_c4(21)
    plain.load_state_dict(synced.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))


@pytest.mark.slow
def test_sharded_voc_evaluation_equals_one_process(tmp_path):
    root = write_voc_detection(tmp_path, n=5)
    dataset = VOCDetection(root, sets=(("2007", "test"),), keep_difficult=True)
    expected = finetune.evaluate_voc_detection(dist_workers.NoisyDetector(dataset), dataset)
    assert 20 < expected["AP50"] < 100  # neither perfect nor empty: the merge has something to get wrong
    mp.spawn(dist_workers.check_sharded_voc_evaluation, args=(2, free_port(), str(root), expected), nprocs=2, join=True)


# ----------------------------------------------------------------------------
# Resume and bad configs
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_crashed_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """On the teaching checkpoint's backbone (resnet10_w16, CIFAR stem): the resumed run must rebuild that
    network from the checkpoint's record, not the reference ResNet-50, before loading the saved state."""
    root = write_voc_segmentation(tmp_path / "VOCdevkit")
    seg = lambda out, **kw: seg_config(root, out, evaluate=False, weights=TEACHING, **kw)  # noqa: E731
    whole = job.fine_tune(job.make_transfer_config(**seg(tmp_path / "whole")), progress=False)

    calls, task = count(), TASKS["voc_segmentation"]

    def crash_at_the_fourth(*args):
        if next(calls) == 3:
            raise RuntimeError("power cut")
        return task.step(*args)

    monkeypatch.setitem(TASKS, "voc_segmentation", dataclasses.replace(task, step=crash_at_the_fourth))
    cfg = job.make_transfer_config(**seg(tmp_path / "cut", checkpoint_every=2))
    with pytest.raises(RuntimeError, match="power cut"):
        job.fine_tune(cfg, progress=False)
    assert torch.load(tmp_path / "cut" / "checkpoint_last.pt", weights_only=True)["iteration"] == 2
    with pytest.raises(ConfigError, match="already holds a fine-tuning run"):
        job.fine_tune(cfg, progress=False)
    monkeypatch.setitem(TASKS, "voc_segmentation", task)
    resumed = job.fine_tune(dataclasses.replace(cfg, resume=True), progress=False)
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in whole.rows]
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert "resuming at iteration 2" in (tmp_path / "cut" / "log.txt").read_text()
    loaded = job.load_transfer_run(tmp_path / "cut")
    assert loaded.model.backbone.conv1.weight.shape == (16, 3, 3, 3)  # the teaching network, not ResNet-50
    with pytest.raises(ConfigError, match="is a voc_segmentation run, not voc_detection"):
        job.fine_tune(dataclasses.replace(cfg, resume=True, task="voc_detection"))


def test_a_random_backbone_of_another_arch_is_the_pretrained_ones_network_from_random_weights(tmp_path):
    """weights='none' with arch: the comparison row for a pretrained network of that arch (notebook 05's
    init='random' beside the teaching checkpoint), the same heads on the same widths."""
    root = write_voc_segmentation(tmp_path / "VOCdevkit")

    def run(out, **fields):
        cfg = job.make_transfer_config(**{**seg_config(root, out), "evaluate": False, "iterations": 1, **fields})
        return job.fine_tune(cfg, progress=False)

    random = run(tmp_path / "r", arch="resnet10_w16", cifar_stem=True)
    taught = run(tmp_path / "t", weights=TEACHING)
    shapes = lambda run: {k: v.shape for k, v in run.model.state_dict().items()}  # noqa: E731
    assert shapes(random) == shapes(taught) and random.model.backbone.conv1.weight.shape == (16, 3, 3, 3)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(processes=2), "sync_bn=True needs GPUs"),
        (dict(processes=2, sync_bn=False, batch_size=3), "batch_size=3 does not split over 2 processes"),
        (dict(task="voc_depth"), r"task='voc_depth' is not one of \['voc_detection', 'coco', 'voc_segmentation'\]"),
        (dict(preset="2x"), "preset='2x' is not one of"),
        (dict(iterations=0), "iterations must be positive, or None for the preset's"),
        (dict(lr="0.1"), "lr must be float, got str"),
        (dict(iteratons=5), "unknown transfer config key 'iteratons'; did you mean 'iterations'"),
        (dict(gpus=1, processes=2), "processes=2 is for CPU runs"),
        (dict(arch="resnet101"), "arch='resnet101' is not a network mocolab builds"),
        (dict(weights="supervised", arch="resnet18"), "arch and cifar_stem choose the network for weights='none'"),
    ],
)
def test_impossible_configs_are_refused_naming_the_fix(fields, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        job.make_transfer_config(**{**seg_config(tmp_path, tmp_path / "out"), **fields})


def test_the_transfer_config_is_frozen_and_none_means_the_presets_value(tmp_path):
    cfg = job.make_transfer_config(**seg_config(tmp_path, tmp_path / "out"), lr=None, batch_size=None)
    assert (cfg.schedule.iterations, cfg.schedule.batch_size, cfg.schedule.lr) == (4, 2, 0.01)  # tiny's, but 4 its
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.iterations = 5
    assert job.transfer_config_from_dict(cfg.to_dict()) == cfg  # as a checkpoint saves it
    with pytest.raises(ConfigError, match="iterations must be positive, or None for the preset's"):
        job.transfer_config_from_dict({**cfg.to_dict(), "iterations": 0})  # no value stands for "the preset's"


def test_more_gpus_than_visible_fail_before_any_process_starts(tmp_path):
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cfg = job.make_transfer_config(**{**seg_config(tmp_path, tmp_path / "out"), "gpus": visible + 2})
    with pytest.raises(ConfigError, match="gpus="):
        job.fine_tune(cfg)
    assert not (tmp_path / "out").exists()


def test_the_task_and_preset_choices_come_from_their_tables():
    import typing

    hints = typing.get_type_hints(job.TransferConfig)
    assert typing.get_args(hints["task"]) == tuple(TASKS) == ("voc_detection", "coco", "voc_segmentation")
    assert typing.get_args(hints["preset"]) == tuple(finetune.PRESETS)
    classes = [f"c{i}" for i in range(20)]
    assert [TASKS[name].num_classes(classes) for name in TASKS] == [21, 21, 20]  # VOC segmentation lists its own
    with pytest.raises(ConfigError, match=r"task='lvis' is not one of \['voc_detection', 'coco', 'voc_seg"):
        job.make_transfer_config(task="lvis")
