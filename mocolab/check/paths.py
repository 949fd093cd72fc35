"""Stage 2 of the machine check: every accelerated path runs on `device` and agrees with its reference.

Each check takes the device to test, runs a small case there and the reference
computation (fp32, the CPU, eager mode, the unbatched solver), asserts that they
agree within a stated tolerance, and returns one line of what it measured. Sizes
are tiny on purpose: this stage proves correctness, stage 3 measures speed.

`python -m mocolab.check` runs them on the GPU (`--cpu`: on the CPU, where the
reference is often the same computation, so the stage proves that the code runs);
tests/test_gpu.py runs each one as a pytest test marked `gpu`.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import socket
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models import build_encoder
from ..moco import MoCo
from ..run.device import synchronize


def _moco(seed: int = 0, dim: int = 16, K: int = 64, shuffle_bn: bool = False) -> MoCo:
    torch.manual_seed(seed)
    encoder = build_encoder("resnet18", cifar_stem=True, head="mlp", dim=dim, bn_splits=1)
    return MoCo(encoder, K=K, m=0.99, T=0.2, dim=dim, shuffle_bn=shuffle_bn)


def _views(n: int = 16, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


def _steps(model: MoCo, device, dtype, steps: int = 3, scaler=None, size: int = 32) -> list[float]:
    """Losses of `steps` SGD steps of `model` on fixed views, under autocast(dtype) (None: fp32)."""
    model = model.to(device)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    losses = []
    for step in range(steps):
        x_q, x_k = (x.to(device) for x in _views(size=size, seed=step))
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            out = model(x_q, x_k)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            out.loss.backward()
            optimizer.step()
        else:
            scaler.scale(out.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        losses.append(out.loss.item())
    return losses


def moco_step_bf16(device) -> str:
    """A MoCo step under bf16 autocast against the same step in fp32: losses within 2%."""
    fp32 = _steps(_moco(), device, None, steps=1)[0]
    bf16 = _steps(_moco(), device, torch.bfloat16, steps=1)[0]
    assert abs(bf16 - fp32) <= 0.02 * abs(fp32), f"bf16 loss {bf16:.4f} vs fp32 {fp32:.4f}"
    return f"loss fp32 {fp32:.4f}, bf16 {bf16:.4f}"


def fp16_loss_scaling(device) -> str:
    """Three steps in fp16 with GradScaler against fp32: finite, losses within 2% (one step at 16 px on a
    CPU, where fp16 convolutions are emulated and slow)."""
    steps, size = (3, 32) if torch.device(device).type == "cuda" else (1, 16)
    scaler = torch.amp.GradScaler(torch.device(device).type)
    fp16 = _steps(_moco(), device, torch.float16, steps, scaler, size)
    fp32 = _steps(_moco(), device, None, steps, size=size)
    assert all(np.isfinite(fp16)), f"fp16 losses {fp16}"
    assert max(abs(a - b) / abs(b) for a, b in zip(fp16, fp32)) <= 0.02, f"fp16 {fp16} vs fp32 {fp32}"
    return f"losses fp16 {', '.join(f'{v:.4f}' for v in fp16)}; scale {scaler.get_scale():.0f}"


def fused_sgd(device) -> str:
    """The fused SGD kernel (what train.build_optimizer uses on a GPU) against the CPU's for-loop SGD."""
    torch.manual_seed(0)
    params = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    results = []
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}  # the CPU: the default kernels
    for where, kernel in ((device, fused), ("cpu", {"foreach": False})):
        ps = [p.clone().to(where).requires_grad_() for p in params]
        opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, **kernel)
        for step in grads:
            for p, g in zip(ps, step):
                p.grad = g.to(where)
            opt.step()
        results.append([p.detach().cpu() for p in ps])
    diff = max((a - b).abs().max().item() for a, b in zip(*results))
    assert diff <= 1e-5, f"fused SGD differs from the reference by {diff:.2e}"
    return f"max difference after 3 steps {diff:.1e}"


def device_views(device) -> str:
    """The device path's augmentation on `device` against the same draws on the CPU (aug+ at 32 px)."""
    from ..augment import batched, recipe

    r = recipe("aug_plus", 32)
    images = torch.randint(0, 256, (16, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p = batched.sample_params(r, 16, 40, 48, torch.Generator().manual_seed(1))
    on_device = batched.apply_params(images.to(device), {k: v.to(device) for k, v in p.items()}, r).cpu()
    on_cpu = batched.apply_params(images, p, r)
    diff = (on_device - on_cpu).abs().max().item()
    assert diff <= 1e-3, f"device views differ from the CPU's by {diff:.2e}"
    return f"max difference {diff:.1e} (normalised units)"


def compiled_views(device) -> str:
    """The augmentation compiled (compile=True on the device and jpeg paths: the choices and the views) against
    eager from the same seeds, and the time of one step's two view batches (512 images, the CIFAR recipe) each
    way, choices included. On the CPU the eager backend stands in for inductor (tests/test_batched_augment.py
    compiles it there)."""
    from ..augment import batched, recipe

    r, n = recipe("cifar", 32), 512
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    backend = "inductor" if torch.device(device).type == "cuda" else "eager"
    fused_views = batched.compiled(batched.apply_params, r, backend)
    fused_choices = batched.compiled(batched.params, r, backend)

    def views(seed: int, compiled: bool) -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(seed)
        u = torch.rand(n, batched.UNIFORMS, generator=g, device=device, dtype=torch.float64)
        sides = torch.full((n,), 32.0, dtype=torch.float64, device=device)
        if not compiled:
            return batched.apply_params(images, batched.params(u, sides, sides, r), r)
        return fused_views(images, fused_choices(u, sides, sides))

    def two_views(compiled: bool) -> float:  # seconds for a step's two view batches, after a warm-up (the compile)
        views(0, compiled)
        synchronize(device)
        tic = time.perf_counter()
        for seed in (1, 2):
            views(seed, compiled)
        synchronize(device)
        return time.perf_counter() - tic

    diff = max((views(s, True) - views(s, False)).abs().max().item() for s in (1, 2))
    assert diff <= 1e-3, f"compiled views differ from eager ones by {diff:.2e}"
    t_eager, t_fused = two_views(False), two_views(True)
    return (
        f"{backend}: max difference {diff:.1e}; 2 x {n} views (choices included) in {1e3 * t_eager:.1f} ms "
        f"eager, {1e3 * t_fused:.1f} ms compiled"
    )


def batches_ahead(device) -> str:
    """Batches made ahead by a thread on its own stream (prefetch=2) against batches made in line, from the same
    seeds: the device path's, 8 steps of 512 images. Each batch is read on the training stream the moment it is
    handed over (a missing wait for the thread's stream would read it half made), and the data alone timed
    each way."""
    from ..config import make_config
    from ..data.device import DeviceBatches
    from ..data.prefetch import Prefetched

    cfg = make_config("cifar10_demo", gpus=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * cfg.batch_size, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    in_line = DeviceBatches(images, torch.arange(len(images), device=device), cfg)

    def epoch(batches) -> tuple[list[torch.Tensor], float]:
        tic, read = time.perf_counter(), []
        for (x_q, x_k), y in batches.epoch(0):
            read.append(torch.cat([x_q.flatten(1), x_k.flatten(1), y[:, None].float()], 1).sum(1))
        synchronize(device)
        return read, time.perf_counter() - tic

    epoch(in_line)  # warm-up: the per-channel constants reach the device
    (made, t_in_line), (ahead, t_ahead) = epoch(in_line), epoch(Prefetched(in_line, 2, device))
    assert all(torch.equal(a, b) for a, b in zip(made, ahead)) and len(made) == len(ahead) == 8, (
        "batches made ahead differ from those made in line"
    )
    return f"8 batches equal; data alone {1e3 * t_in_line:.0f} ms in line, {1e3 * t_ahead:.0f} ms made ahead"


def background_knn(device) -> str:
    """The kNN monitor read in a thread on its own stream (knn_background) against the same reading in line,
    while the training stream keeps changing the encoder's weights (as the next epoch's steps do): the thread
    must read the weights of its start. ResNet-18 at 32 px, 4,096 bank and 1,024 test images on a GPU (256 and 64
    on the CPU)."""
    from ..augment import recipe
    from ..background_monitor import BackgroundMonitor
    from ..config import make_config
    from ..data import KnnSets
    from ..data.device import DeviceEvalBatches
    from ..train import monitor_readings

    cfg = make_config("cifar10_demo", gpus=0, knn_feature="avgpool")
    r, g = recipe(cfg.augmentation), torch.Generator().manual_seed(0)

    def split(n: int) -> DeviceEvalBatches:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
        return DeviceEvalBatches(images, torch.randint(0, 10, (n,), generator=g).to(device), r.mean, r.std)

    sets = KnnSets(
        *((split(4096), split(1024)) if torch.device(device).type == "cuda" else (split(256), split(64))), 10
    )
    encoder = _moco().query_encoder.to(device)

    def read(model, probe) -> dict:
        return monitor_readings(model, sets, cfg, device, probe, progress=False)

    tic = time.perf_counter()
    in_line = read(encoder, None)["knn_top1"]
    t_in_line = time.perf_counter() - tic
    beside, row = BackgroundMonitor(read, device), {"knn_top1": None}
    beside.start(encoder, None, row)
    with torch.no_grad():  # the training stream goes on: 50 updates of every weight
        for _ in range(50):
            for p in encoder.parameters():
                p.mul_(1.01)
    beside.finish()
    assert row["knn_top1"] == in_line, f"kNN read in the background {row['knn_top1']} != in line {in_line}"
    return f"kNN {in_line:.2f}% both ways; {1e3 * t_in_line:.0f} ms in line, {1e3 * row['knn_s']:.0f} ms beside updates"


def jpeg_decode(device) -> str:
    """torchvision's decode_jpeg on `device` (nvJPEG on a GPU) against PIL's decoder on the CPU."""
    import torchvision
    from torchvision.io import ImageReadMode

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (24, 32, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 192 x 256 blocks
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=90)
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    decoded = torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=device).cpu().int()
    reference = torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))).permute(2, 0, 1)
    diff = (decoded - reference.int()).abs()
    # Decoders may round the inverse DCT and upsample chroma differently: a level or two, rarely more.
    assert diff.float().mean().item() <= 1.0 and diff.max().item() <= 32, (
        f"decoded pixels differ from PIL's by {diff.float().mean().item():.2f} on average, {diff.max().item()} at most"
    )
    return f"mean absolute difference {diff.float().mean().item():.3f} levels, max {diff.max().item()}"


def compiled_steps(device) -> str:
    """Three MoCo steps with both encoders compiled (compile=True) against eager mode: losses within 1e-3.
    On the CPU the eager backend stands in for inductor, whose C++ build takes minutes."""
    eager = _steps(_moco(), device, None)
    model = _moco()
    backend = "inductor" if torch.device(device).type == "cuda" else "eager"
    model.query_encoder.compile(backend=backend)
    model.key_encoder.compile(backend=backend)
    compiled = _steps(model, device, None)
    diff = max(abs(a - b) for a, b in zip(eager, compiled))
    assert diff <= 1e-3, f"compiled losses {compiled} vs eager {eager}"
    return f"{backend}: max loss difference {diff:.1e} over 3 steps"


def svm_solver(device) -> str:
    """The batched squared-hinge SVM solver on `device` against scikit-learn's LinearSVC (liblinear)."""
    from ..evaluate.svm import fit_svms, sample_costs, sklearn_svm_scores

    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(300, 64, generator=g, dtype=torch.float64), dim=1)
    w_true = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = torch.where(x @ w_true > 0, 1.0, -1.0)
    c = torch.stack([sample_costs(y[:, j], 0.5) for j in range(3)], 1)  # the protocol's 2:1 class weights
    w = fit_svms(x.to(device), y.to(device), c.to(device)).cpu()
    ours = (x @ w[:-1] + w[-1]).numpy()
    theirs = np.stack([sklearn_svm_scores(x, y[:, j], 0.5, x) for j in range(3)], axis=1)
    diff = np.abs(ours - theirs).max()
    assert diff <= 1e-3 * np.abs(theirs).max(), f"decision values differ from LinearSVC's by {diff:.2e}"
    return f"3 classes, 300 x 64: max decision difference {diff:.1e}"


def knn_vote(device) -> str:
    """The weighted kNN vote on `device` against the same computation on the CPU: the same top-1."""
    from ..evaluate.knn import knn_accuracy

    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(500, 32, generator=g), dim=1)
    test = F.normalize(torch.randn(100, 32, generator=g), dim=1)
    bank_y, test_y = torch.randint(0, 10, (500,), generator=g), torch.randint(0, 10, (100,), generator=g)
    here = knn_accuracy(test.to(device), test_y.to(device), bank.to(device), bank_y.to(device), 10, ks=(20,))
    there = knn_accuracy(test, test_y, bank, bank_y, 10, ks=(20,))
    assert here == there, f"kNN on {device}: {here}, on the CPU: {there}"
    return f"top-1 {here[20]['top1']:.1f}% on both"


def sync_batchnorm(device) -> str:
    """One forward/backward of a SyncBatchNorm model in one process against plain BatchNorm."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).to(device)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    x = torch.randn(8, 3, 16, 16, device=device)
    a, b = plain(x), synced(x)
    a.square().mean().backward()
    b.square().mean().backward()
    diff = max((a - b).abs().max().item(), (plain[0].weight.grad - synced[0].weight.grad).abs().max().item())
    assert diff <= 1e-5, f"SyncBatchNorm differs from BatchNorm by {diff:.2e}"
    return f"max difference {diff:.1e} (outputs and gradients)"


def transfer_models(device) -> str:
    """One forward/backward of each transfer model (Faster R-CNN C4, Mask R-CNN FPN, FCN) at a small size."""
    from ..transfer import models
    from ..transfer.finetune import TINY_MODEL_OPTIONS

    torch.manual_seed(0)
    image = torch.rand(3, 96, 128, device=device)
    target = {
        "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]], device=device),
        "labels": torch.tensor([3], device=device),
        "masks": torch.zeros(1, 96, 128, dtype=torch.uint8, device=device),
    }
    target["masks"][0, 20:80, 10:60] = 1
    losses = {}
    for name, model in (
        ("faster_rcnn_c4", models.faster_rcnn_c4(21, **TINY_MODEL_OPTIONS)),
        ("mask_rcnn_fpn", models.mask_rcnn_fpn(81, **TINY_MODEL_OPTIONS)),
    ):
        model.to(device).train()
        loss = sum(model([image], [target]).values())
        loss.backward()
        losses[name] = loss.item()
    fcn = models.fcn_r50_d8(21).to(device).train()
    out = fcn(image[None].expand(2, -1, -1, -1))
    mask = torch.randint(0, 21, (2, 96, 128), device=device)
    loss = F.cross_entropy(out["out"], mask) + 0.4 * F.cross_entropy(out["aux"], mask)
    loss.backward()
    losses["fcn_r50_d8"] = loss.item()
    assert all(np.isfinite(v) for v in losses.values()), losses
    return ", ".join(f"{k} loss {v:.3f}" for k, v in losses.items())


def linear_probe_steps(device) -> str:
    """Two epochs of the AvgPool probe on a frozen ResNet-18 on `device` (the probe checks the backbone
    stayed frozen); its loss against the same probe on the CPU, within 1e-3."""
    from ..evaluate.baselines import baseline_encoder
    from ..evaluate.linear import linear_probe, probe_recipe

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 4, (64,), generator=g)
    data = torch.utils.data.TensorDataset(images, labels)
    recipe = dataclasses.replace(probe_recipe("avgpool", epochs=2, lr=0.05), batch_size=64)
    losses = []
    for where in (device, "cpu"):
        encoder, _ = baseline_encoder("random", "resnet18", cifar_stem=True)
        torch.manual_seed(0)
        with _quiet():
            result = linear_probe(
                encoder.backbone, data, data, 4, "avgpool", recipe, device=where, workers=0, progress=False
            )
        losses.append(result["history"][-1]["loss"])
    assert abs(losses[0] - losses[1]) <= 1e-3, f"probe loss on {device} {losses[0]:.5f}, on the CPU {losses[1]:.5f}"
    return f"final loss {losses[0]:.4f} ({device}) vs {losses[1]:.4f} (CPU)"


@contextmanager
def _quiet():
    """The probe's small-set warnings are expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def two_processes(device) -> str:
    """Two processes on the one device over gloo: shuffle BN's cross-process permutation and the global
    queue on `device` tensors; every rank ends with the same queue, holding both ranks' keys in rank order."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_process_worker, args=(2, port, str(device)), nprocs=2, join=True)
    return "2 processes: the same queue on both ranks, moved by the global batch; unshuffle undoes the shuffle"


def _two_process_worker(rank: int, world: int, port: int, device: str) -> None:
    import torch.distributed as dist
    from .. import distributed as dist_

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _moco(K=32, dim=8, shuffle_bn=True).to(device)
        torch.manual_seed(10 + rank)
        x_q, x_k = (torch.randn(4, 3, 16, 16).to(device) for _ in range(2))
        model(x_q, x_k)
        queues = dist_.all_gather_cat(model.queue.keys[None])
        assert torch.equal(queues[0], queues[1]), "the ranks' queues differ"
        assert model.queue.ptr.item() == 8, f"queue pointer {model.queue.ptr.item()}, expected 8"
        x = (rank * 4 + torch.arange(4, device=device)).float()[:, None]
        shuffled, unshuffle = dist_.batch_shuffle(x)
        assert torch.equal(dist_.batch_unshuffle(shuffled, unshuffle), x), "unshuffle did not undo the shuffle"
    finally:
        dist.destroy_process_group()


CHECKS = {
    "MoCo step in bf16 vs fp32": moco_step_bf16,
    "fp16 with loss scaling": fp16_loss_scaling,
    "fused SGD vs for-loop SGD": fused_sgd,
    "device-path views vs CPU": device_views,
    "batches made ahead vs in line": batches_ahead,
    "kNN monitor in the background vs in line": background_knn,
    "decode_jpeg (nvJPEG) vs PIL": jpeg_decode,
    "batched SVM vs LinearSVC": svm_solver,
    "kNN vs CPU": knn_vote,
    "SyncBatchNorm, one process": sync_batchnorm,
    "transfer models forward/backward": transfer_models,
    "linear probe vs CPU": linear_probe_steps,
    "two processes on one device (gloo)": two_processes,
    "compiled augmentation vs eager": compiled_views,
    "compile=True vs eager": compiled_steps,
}  # last: inductor's compile takes the longest
