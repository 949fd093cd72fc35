"""The machine check's stages: environment, every accelerated path, speed side by side, accuracy smoke.

Each stage yields rows (stage, check, status, seconds, result, hint); a row that
fails is reported with its error and a hint and the next row still runs, and a
stage stops starting rows once its time budget is spent (the rest are reported
as skipped), so the whole check stays inside its time box on a slow machine.
Sizes: `Sizes.gpu()` for the real check (about 9 minutes on one H100/H200),
`Sizes.cpu()` for the tiny run CI executes on a 2-core CPU.

References printed beside the results (docs/protocols.md, section 1): the
official CIFAR-10 demo reached kNN top-1 36.0 / 38.2 / 38.7 after epochs 1 / 2 / 3
of its 200-epoch schedule (asymmetric loss, one GPU), and 82.6 (asymmetric) /
85.3 (symmetric) after 200 epochs.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..run.device import synchronize
from . import paths
from .step import cudagraph_skips, gradient_difference, timed_step

DEMO_KNN_FIRST_EPOCHS = (36.0, 38.2, 38.7)  # the official demo after epochs 1, 2, 3 (asymmetric, one GPU)
DEMO_KNN_200 = {"asymmetric": 82.6, "symmetric": 85.3}


@dataclass
class Row:
    stage: str
    check: str
    status: str  # "ok", "FAIL", "skipped" or "info"
    seconds: float | None
    result: str
    hint: str = ""


@dataclass(frozen=True)
class Sizes:
    """How big each speed and accuracy run is, and each stage's time budget in seconds."""

    device: str
    demo_subset: int  # images of the cifar10_demo runs (0: all 50,000)
    demo_overrides: dict  # on top of cifar10_demo (tiny runs shrink the batch, queue and kNN sets)
    fast_epochs: int  # epochs of the fast path's run (its kNN after each is stage 4's)
    reference_epochs: int
    jpeg_files: int  # synthetic JPEGs of ImageNet size for the ResNet-50 rows
    jpeg_size: tuple[int, int]
    jpeg_overrides: dict
    jpeg_epochs: int
    svm_shape: tuple[int, int, int]  # (images, feature dim, classes): VOC07's trainval is 5011 x 2048, 20
    budgets: dict

    @staticmethod
    def gpu() -> "Sizes":
        return Sizes(
            device="cuda",
            demo_subset=0,
            demo_overrides={},
            fast_epochs=3,
            reference_epochs=1,
            jpeg_files=4096,
            jpeg_size=(500, 375),
            jpeg_overrides={},
            jpeg_epochs=4,
            svm_shape=(5011, 2048, 20),
            budgets={"environment": 20, "paths": 200, "speed": 320, "accuracy": 5},
        )  # 545 s to start rows in (paths: two inductor builds, the encoders' and the augmentation's; speed: the
        # CUDA graphs rows come last, each an inductor build of the whole step, and start only within the budget)

    @staticmethod
    def cpu() -> "Sizes":
        return Sizes(
            device="cpu",
            demo_subset=256,
            demo_overrides=dict(
                batch_size=64, K=256, bn_splits=2, knn_bank_size=256, knn_test_size=128, knn_k=20, workers=0
            ),
            fast_epochs=1,
            reference_epochs=1,
            jpeg_files=64,
            jpeg_size=(80, 60),
            jpeg_overrides=dict(arch="resnet18", image_size=48, batch_size=16, K=64, bn_splits=2, workers=0),
            jpeg_epochs=1,
            svm_shape=(600, 64, 4),
            budgets={"environment": 30, "paths": 240, "speed": 300, "accuracy": 5},
        )


def timed(stage: str, check: str, fn: Callable[[], str | tuple[str, str]]) -> Row:
    """Run one check: ok with its result line, or FAIL with the error and a hint (then free GPU memory)."""
    tic = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the checks' own small-set warnings; the row says what matters
            result = fn()
        status, text = result if isinstance(result, tuple) else ("ok", result)
        return Row(stage, check, status, time.perf_counter() - tic, text)
    except Exception as error:  # reported in the row; the next check still runs
        last = traceback.extract_tb(error.__traceback__)[-1]
        text = f"{type(error).__name__}: {error}".strip()
        return Row(
            stage,
            check,
            "FAIL",
            time.perf_counter() - tic,
            f"{text[:400]} (at {Path(last.filename).name}:{last.lineno})",
            hint_for(error),
        )
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def hint_for(error: Exception) -> str:
    """What to try, for the errors a GPU machine typically gives."""
    text = str(error).lower()
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text:
        return "out of GPU memory: is another process on the GPU (nvidia-smi)? Run the check alone"
    if "nvjpeg" in text or "decode_jpeg" in text:
        return (
            "torchvision's GPU JPEG decoder is missing or failed: install torchvision's CUDA build; "
            "data_path='cpu' or 'device' work without it"
        )
    if "cuda" in text or "cudnn" in text or "nccl" in text:
        return (
            f"a CUDA error: does torch's CUDA build ({torch.version.cuda}) suit the driver? "
            f"CUDA_LAUNCH_BLOCKING=1 locates the failing kernel"
        )
    if isinstance(error, AssertionError):
        return "the accelerated path disagrees with its reference: a bug to report with this row"
    return ""


def run_stage(stage: str, checks: list[tuple[str, Callable]], budget: float) -> Iterator[Row]:
    """The stage's rows in order; once `budget` seconds are spent, the remaining checks are skipped."""
    tic = time.perf_counter()
    for check, fn in checks:
        spent = time.perf_counter() - tic
        if spent > budget:
            yield Row(stage, check, "skipped", None, f"the stage's {budget:.0f} s budget was spent ({spent:.0f} s)")
            continue
        yield timed(stage, check, fn)


# ----------------------------------------------------------------------------
# Stage 1: environment
# ----------------------------------------------------------------------------


def environment(device: str) -> list[tuple[str, Callable]]:
    import torchvision

    def versions():
        return (
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}"
        )

    def gpu():
        if device != "cuda":
            return "info", "no GPU used (--cpu)"
        p = torch.cuda.get_device_properties(0)
        return f"{torch.cuda.device_count()} x {p.name}, {p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor}"

    def bf16():
        if device != "cuda":
            return "info", "bf16 autocast on the CPU (emulated; for GPUs this row says whether they have it)"
        if not torch.cuda.is_bf16_supported():
            return "FAIL", "this GPU has no bf16: precision='auto' falls back to fp32 (correct, slower)"
        return "supported: precision='auto' trains in bf16"

    def nvjpeg():
        paths.jpeg_decode(device)
        return f"decode_jpeg(device='{device}') decodes a JPEG"

    def cpus():
        return f"{os.cpu_count()} CPUs visible, {len(os.sched_getaffinity(0))} usable by this process"

    return [
        ("versions", versions),
        ("GPU", gpu),
        ("bf16", bf16),
        ("JPEG decoding on the device", nvjpeg),
        ("CPU cores", cpus),
    ]


# ----------------------------------------------------------------------------
# Stage 3: speed, side by side; stage 4 reads the fast run's kNN
# ----------------------------------------------------------------------------


class Speed:
    """The speed rows, sharing their runs: the fast cifar10_demo run is also the accuracy smoke."""

    def __init__(self, sizes: Sizes, dataset: str, data_root: str, work: Path):
        self.sizes, self.dataset, self.data_root, self.work = sizes, dataset, data_root, work
        self.fast = None  # the fast path's Run, for stage 4
        self.eager_step = None  # the step alone, eager: the graphs row compares its gradients

    def demo(self, name: str, epochs: int, **overrides):
        from .. import make_config, pretrain

        s = self.sizes
        cfg = make_config(
            "cifar10_demo",
            dataset=self.dataset,
            data_root=self.data_root,
            train_subset=s.demo_subset,
            gpus=1 if s.device == "cuda" else 0,
            stop_after=epochs,
            output_dir=str(self.work / name),
            **{**s.demo_overrides, **overrides},
        )
        return pretrain(cfg, progress=False)

    def fast_path(self) -> str:
        run = self.demo("demo_fast", self.sizes.fast_epochs, data_path="device", precision="auto")
        self.fast = run
        text = _epoch_figures(run, "device path, " + ("bf16" if self.sizes.device == "cuda" else "fp32"))
        return f"{text}; kNN {_knn_text(run)}"  # stage 4's, kept here too: a check cut short still has them

    def step_alone(self) -> str:
        """cifar10_demo's training step on views already on the device (the data left out), as a run takes it:
        its precision, fused SGD, split BN. The issue's "MoCo step" row; the fast path's epochs add the data."""
        self.eager_step = self._timed_step(False)
        return self._step_text(self.eager_step, "eager")

    def step_graphs(self) -> str | tuple[str, str]:
        """The same step compiled whole and replayed as CUDA graphs (compile="graphs"), beside eager: its first
        step's gradients must be eager's but for rounding (a compiled step once read the queue after the enqueue)."""

        def measure() -> str:
            graphs = self._timed_step("graphs")
            text = self._step_text(graphs, f"compile='graphs' (first step {graphs.first_seconds:.0f} s)")
            if self.eager_step is None:
                return text
            diff = gradient_difference(graphs.grads, self.eager_step.grads)
            assert diff < 0.05, f"the first step's gradients differ from eager's by {diff:.1%} of their norm"
            return text + (
                f"; {self.eager_step.seconds / graphs.seconds:.1f}x eager's step, its first gradients within "
                f"{diff:.1e} of eager's"
            )

        return self._as_graphs(measure)

    def fast_path_graphs(self) -> str | tuple[str, str]:
        """The fast path's run again, its step as CUDA graphs (compile="graphs": also the augmentation compiled),
        beside the batches made ahead and the kNN monitor in the background, as a 200-epoch run would take it."""

        def measure() -> str:
            run = self.demo("demo_graphs", 2, data_path="device", precision="auto", compile="graphs")
            text = _epoch_figures(run, "device path, bf16, compile='graphs'") + f"; kNN {_knn_text(run)}"
            if self.fast is not None:
                text += f"; {_train_seconds(self.fast) / _train_seconds(run):.1f}x the eager fast path per epoch"
            return text

        return self._as_graphs(measure)

    def _as_graphs(self, measure: Callable[[], str]) -> str | tuple[str, str]:
        """A CUDA graphs row: info without a GPU; FAIL when inductor ran a graph of `measure` without them (it
        would time compile="model" under the name "graphs")."""
        if self.sizes.device != "cuda":
            return "info", "CUDA graphs need a GPU (tests/test_moco.py compares the whole step compiled with eager)"
        return _graphs_used(measure)

    def _timed_step(self, compile):
        from .. import make_config

        s = self.sizes
        cfg = make_config("cifar10_demo", gpus=1 if s.device == "cuda" else 0, compile=compile, **s.demo_overrides)
        warmup, steps = (10, 50) if s.device == "cuda" else (1, 3)
        return timed_step(cfg, torch.device(s.device), warmup, steps)

    def _step_text(self, timing, how: str) -> str:
        batch = timing.batch_size
        return (
            f"{1e3 * timing.seconds:.1f} ms per step of {batch} ({batch / timing.seconds:.0f} img/s), "
            f"{timing.precision}, {how}"
        )

    def reference_path(self) -> str:
        workers = self.sizes.demo_overrides.get("workers", max(1, len(os.sched_getaffinity(0)) - 1))
        run = self.demo(
            "demo_reference",
            self.sizes.reference_epochs,
            data_path="cpu",
            precision="fp32",
            workers=workers,
            knn_every=0,
        )
        text = _epoch_figures(run, f"PIL in {workers} loader workers, fp32")
        if self.fast is not None:
            fast = _train_seconds(self.fast)
            text += f"; the fast path is {_train_seconds(run) / fast:.1f}x faster per epoch"
        return text

    def jpeg_rows(self) -> list[tuple[str, Callable]]:
        folder = self.work / "jpegs"
        rates = {}

        def config(path: str, precision: str, epochs: int):
            from .. import make_config

            if not folder.exists():
                synthetic_jpegs(folder, self.sizes.jpeg_files, self.sizes.jpeg_size)
            workers = self.sizes.jpeg_overrides.get("workers", max(1, len(os.sched_getaffinity(0)) - 1))
            return make_config(
                "imagenet_mocov2",
                dataset="imagefolder",
                data_root=str(folder),
                data_path=path,
                precision=precision,
                gpus=1 if self.sizes.device == "cuda" else 0,
                knn_every=0,
                stop_after=epochs,
                checkpoint_every=0,
                output_dir=str(self.work / f"r50_{path}"),
                **{**self.sizes.jpeg_overrides, "workers": workers},
            )

        def run(path: str, precision: str, epochs: int):
            from .. import pretrain

            history = pretrain(config(path, precision, epochs), progress=False).history
            rates[path] = history[-1]["images_per_s"]  # the last epoch: past cuDNN's autotuning and warm-up
            return f"{rates[path]:.0f} img/s (last of {len(history)} epochs of {self.sizes.jpeg_files} images)"

        def jpeg():
            from ..data import pretrain_batches

            text = run("jpeg", "auto", self.sizes.jpeg_epochs) + ", decode and augmentation on the device"
            device = torch.device(self.sizes.device)
            in_line = pretrain_batches(dataclasses.replace(config("jpeg", "auto", 1), prefetch=0), device)
            stages = jpeg_stages(in_line, device)  # the next question when the rate falls short of the step's
            return (
                text
                + "; its stages one after another, ms per batch: "
                + ", ".join(f"{stage} {ms:.1f}" for stage, ms in stages.items())
            )

        def reference():
            text = run("cpu", "fp32", 1) + ", PIL in loader workers, fp32"
            if "jpeg" in rates:
                text += f"; the jpeg path is {rates['jpeg'] / rates['cpu']:.1f}x faster"
            return text

        arch = self.sizes.jpeg_overrides.get("arch", "resnet50")
        size = self.sizes.jpeg_overrides.get("image_size", 224)
        return [
            (f"{arch} at {size} px from JPEG files: jpeg path", jpeg),
            (f"{arch} at {size} px from JPEG files: reference path", reference),
        ]

    def svm(self) -> str:
        from ..evaluate.svm import fit_svms, sample_costs, sklearn_svm_scores

        n, d, classes = self.sizes.svm_shape
        g = torch.Generator().manual_seed(0)
        x = torch.nn.functional.normalize(torch.randn(n, d, generator=g).relu(), dim=1).double()
        y = torch.where(torch.rand(n, classes, generator=g) < 0.1, 1.0, -1.0).double()
        c = torch.stack([sample_costs(y[:, j], 0.1) for j in range(classes)], 1)
        device = self.sizes.device
        fit_svms(x[:64].to(device), y[:64].to(device), c[:64].to(device))  # warm-up: kernels, cuBLAS handles
        synchronize(device)
        tic = time.perf_counter()
        fit_svms(x.to(device), y.to(device), c.to(device))
        synchronize(device)
        ours = time.perf_counter() - tic
        tic = time.perf_counter()
        sklearn_svm_scores(x.numpy(), y[:, 0].numpy(), 0.1, x[:1].numpy())
        theirs = time.perf_counter() - tic
        return (
            f"{n} x {d}, cost 0.1: {classes} classes at once in {ours:.2f} s on {device}; LinearSVC "
            f"{theirs:.2f} s for one class: {theirs * classes / ours:.0f}x faster over all classes"
        )

    def checks(self) -> list[tuple[str, Callable]]:
        return [
            ("cifar10_demo: fast path", self.fast_path),
            ("cifar10_demo: the step alone", self.step_alone),
            ("cifar10_demo: reference path", self.reference_path),
            *self.jpeg_rows(),
            ("VOC07-sized SVMs: batched solver vs LinearSVC", self.svm),
            # last: each compiles for a minute or two, and the stage's budget skips them on a slow machine
            ("cifar10_demo: the step as CUDA graphs vs eager", self.step_graphs),
            ("cifar10_demo: fast path as CUDA graphs", self.fast_path_graphs),
        ]


def _graphs_used(measure: Callable[[], str]) -> str | tuple[str, str]:
    """measure()'s result, or FAIL with it when inductor ran a graph of it without CUDA graphs."""
    skips = cudagraph_skips()
    text = measure()
    if skipped := cudagraph_skips() - skips:
        return "FAIL", f"{text}; inductor ran {skipped} graph(s) without CUDA graphs (TORCH_LOGS=cudagraphs: why)"
    return text


def _knn_text(run) -> str:
    """The kNN top-1 readings after each epoch of a run: "35.0 / 35.6 / 37.2"."""
    return " / ".join(f"{v:.1f}" for v in _knn_readings(run))


def _knn_readings(run) -> list[float]:
    return [r["knn_top1"] for r in run.history if r["epoch"] > 0]


def _train_seconds(run) -> float:
    """Seconds per epoch of training (the kNN pass apart), over the epochs after the first when there are
    several (the first includes cuDNN autotuning and the device cache's move)."""
    trained = [r["train_s"] for r in run.history if r["epoch"] > 0]
    return float(np.mean(trained[1:] if len(trained) > 1 else trained))


def _epoch_figures(run, how: str) -> str:
    trained = [r for r in run.history if r["epoch"] > 0]
    knn = [r["knn_s"] for r in trained if r["knn_s"] is not None]
    text = (
        f"{how}: {_train_seconds(run):.1f} s/epoch training ({trained[-1]['images_per_s']:.0f} img/s), "
        f"first epoch {trained[0]['train_s']:.1f} s"
    )
    return text + (f", kNN pass {np.mean(knn):.1f} s" if knn else "")


def jpeg_stages(batches, device, epoch: int = 0) -> dict[str, float]:
    """Milliseconds per batch of each stage of the jpeg path (data.jpeg.JpegBatches), run one after another and
    each waited for (the first batch, with the workers' start, left out): waiting for the files from the loader's
    workers, decoding, the two views. Where the path's time goes: a GPU profile's first question."""
    spent, batches_timed = dict(files=0.0, decode=0.0, views=0.0), 0
    tic = time.perf_counter()
    for step, (buffer, offsets, _, indices) in enumerate(batches.files_of(epoch)):
        got = time.perf_counter()
        images = batches.decoded(buffer, offsets, indices)
        synchronize(device)
        decoded = time.perf_counter()
        batches.two_views(images, epoch, step)
        synchronize(device)
        if step > 0:
            spent["files"] += got - tic
            spent["decode"] += decoded - got
            spent["views"] += time.perf_counter() - decoded
            batches_timed += 1
        tic = time.perf_counter()
    return {stage: 1000 * seconds / max(batches_timed, 1) for stage, seconds in spent.items()}


def synthetic_jpegs(folder: Path, n: int, size: tuple[int, int]) -> None:
    """n smooth-noise JPEGs of `size` (ImageNet's typical 500 x 375) in two classes, written in threads."""
    from PIL import Image

    def write(i: int) -> None:
        rng = np.random.default_rng(i)
        w, h = size
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)  # smooth: compresses like a photo
        image.save(folder / "train" / f"c{i % 2}" / f"{i:05d}.jpg", quality=90)

    for c in (0, 1):
        (folder / "train" / f"c{c}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(n)))


def accuracy(speed: Speed) -> list[tuple[str, Callable]]:
    def smoke():
        if speed.fast is None:
            return "FAIL", "the fast cifar10_demo run of stage 3 did not finish"
        epochs = len(_knn_readings(speed.fast))
        ref = " / ".join(f"{v:.1f}" for v in DEMO_KNN_FIRST_EPOCHS[:epochs])
        return f"kNN top-1 after epochs 1-{epochs}: {_knn_text(speed.fast)} (the official demo: {ref})"

    return [("cifar10_demo, first epochs of 200, all 50,000 images", smoke)]


def full_run(
    dataset: str, data_root: str, work: Path, symmetric: bool, compile: bool | str = False
) -> list[tuple[str, Callable]]:
    """The whole 200-epoch cifar10_demo, with its kNN monitor every epoch as the official demo's; compile: its
    Config.compile."""

    def run():
        from .. import make_config, pretrain

        tic = time.perf_counter()
        cfg = make_config(
            "cifar10_demo",
            dataset=dataset,
            data_root=data_root,
            symmetric=symmetric,
            gpus=1,
            compile=compile,
            output_dir=str(work / "demo_200"),
        )
        history = pretrain(cfg, progress=False).history
        loss = "symmetric" if symmetric else "asymmetric"
        return (
            f"kNN top-1 {history[-1]['knn_top1']:.1f} after 200 epochs ({loss}; the official demo: "
            f"{DEMO_KNN_200[loss]}), {(time.perf_counter() - tic) / 60:.1f} min, compile={compile!r}"
        )

    return [("cifar10_demo, 200 epochs", run)]
