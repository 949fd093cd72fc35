"""The batched augmentation eager and compiled (compile=True): time per step's two view batches and kernels.

    python benchmarks/augment_time.py          # CPU: the CIFAR recipe (512 at 32 px), aug+ and v1 (64 at 224 px)
    python benchmarks/augment_time.py --device cuda --imagenet-batch 256

Per recipe, three ways of applying the same draws (`augment.batched.sample_params`; the draws themselves are
not timed, but their operations are counted: the "choices" column, eager and compiled):
    eager, subsets      each op on the images that draw it (the CPU's default; a host sync per op on a GPU)
    eager, torch.where  each op on every image, then selected (the GPU's default: no sync)
    compiled            `batched.compiled(apply_params, r)`: torch.compile (inductor) of the torch.where form

With kornia installed (`pip install kornia`; not a mocolab dependency), a last column times kornia's
AugmentationSequential of the same recipe on the same images (its own draws, made inside the call).

Columns: milliseconds for the two view batches of a step (median of --repeats, after a warm-up that compiles),
the kernels each way, and the compile's one-off seconds. Eager kernels: aten operations that compute (views
left out), each a launch on a GPU, counted by `mocolab.check.operations`. Compiled kernels: the fused kernels in
inductor's generated code plus the library calls it keeps (convolutions, matrix products, sorts).
"""

import argparse
import functools
import re
import statistics
import time

import torch
from torch._inductor.utils import run_and_get_code

from mocolab.augment import batched, recipe
from mocolab.check.operations import Operations
from mocolab.run.device import synchronize


def two_views_ms(fn, images, draws, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        for p in draws:
            fn(images, p)
        synchronize(device)
        times.append(1e3 * (time.perf_counter() - tic))
    return statistics.median(times)


def eager_kernels(fn, images, p) -> int:
    with Operations() as ops:
        fn(images, p)
    return ops.computing


def compiled_kernels(code: str) -> int:
    fused = len(re.findall(r"^def (?:cpp|triton)_\w+|= async_compile\.(?:cpp_pybinding|triton)\(", code, re.M))
    return fused + len(re.findall(r"extern_kernels\.\w+\(|torch\.ops\.aten\.\w+\.\w+\(", code))


def measure(name: str, size: int, n: int, source: int, device, repeats: int) -> dict:
    r = recipe(name, size)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, source, source), dtype=torch.uint8, generator=g).to(device)
    draws = [batched.sample_params(r, n, source, source, torch.Generator().manual_seed(s)) for s in (1, 2)]
    draws = [{k: v.to(device) for k, v in p.items()} for p in draws]
    row = {"recipe": f"{name} {n} x {size} px"}
    for label, where in (("subsets", False), ("where", True)):
        batched.USE_TORCH_WHERE = where
        eager = functools.partial(batched.apply_params, r=r)
        eager(images, draws[0])
        row[f"{label} ms"] = two_views_ms(eager, images, draws, device, repeats)
        row[f"{label} kernels"] = eager_kernels(eager, images, draws[0])
    batched.USE_TORCH_WHERE = None
    torch._dynamo.reset()
    fused = torch.compile(functools.partial(batched.apply_params, r=r), dynamic=False)
    tic = time.perf_counter()
    _, code = run_and_get_code(fused, images, draws[0])
    synchronize(device)
    row["compile s"] = time.perf_counter() - tic
    row["compiled ms"] = two_views_ms(fused, images, draws, device, repeats)
    row["compiled kernels"] = compiled_kernels("\n".join(code))
    # the choices (`params`, from one call's uniforms): operations eager, kernels compiled
    with Operations() as ops:
        batched.sample_params(r, n, source, source, torch.Generator(device=device).manual_seed(3), device)
    u = torch.rand(n, batched.UNIFORMS, device=device, dtype=torch.float64)
    sides = torch.full((n,), float(source), dtype=torch.float64, device=device)
    _, code = run_and_get_code(torch.compile(functools.partial(batched.params, r=r), dynamic=False), u, sides, sides)
    row["choices: eager / compiled"] = f"{ops.computing} / {compiled_kernels(chr(10).join(code))}"
    if kornia_pipeline is not None:
        pipeline, x = kornia_pipeline(r), images.float() / 255
        row["kornia ms"] = two_views_ms(lambda images, p: pipeline(x), images, draws, device, repeats)
    return row


def kornia_pipeline(r):
    """The recipe as kornia's AugmentationSequential, in the recipe's order."""
    import kornia.augmentation as K

    ops = {
        "crop": K.RandomResizedCrop((r.size, r.size), scale=r.crop_scale, ratio=r.crop_ratio),
        "flip": K.RandomHorizontalFlip(p=r.flip_p),
        "jitter": K.ColorJitter(*r.jitter, p=r.jitter_p),
        "gray": K.RandomGrayscale(p=r.gray_p),
        "blur": K.RandomGaussianBlur((r.blur_kernel, r.blur_kernel), r.blur_sigma, p=r.blur_p),
    }
    normalize = K.Normalize(torch.tensor(r.mean), torch.tensor(r.std))
    return K.AugmentationSequential(*(ops[o] for o in r.order if o in ops), normalize)


try:
    import kornia  # noqa: F401
except ImportError:
    kornia_pipeline = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cifar-batch", type=int, default=512)
    parser.add_argument("--imagenet-batch", type=int, default=64, help="images per view batch for aug+ and v1")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [
        measure("cifar", 32, args.cifar_batch, 32, device, args.repeats),
        measure("aug_plus", 224, args.imagenet_batch, 256, device, args.repeats),
        measure("v1", 224, args.imagenet_batch, 256, device, args.repeats),
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [v if isinstance(v, str) else (f"{v:.1f}" if isinstance(v, float) else str(v)) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
