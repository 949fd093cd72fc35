"""`python -m mocolab.check` (`make gpu-check`): does this machine run every mocolab path, and how fast?

Stages, in order, each time-boxed and reported even when a later one fails:

1. environment: versions, the GPU and its memory, bf16, JPEG decoding on the device, CPU cores;
2. every accelerated path against its reference (paths.py; tests/test_gpu.py runs the same checks
   under pytest, marked `gpu`);
3. speed side by side in one run: cifar10_demo on the fast path against the reference path and
   its training step alone, ResNet-50 at 224 px from JPEG files on the jpeg path against the
   reference, the batched SVM solver against LinearSVC on a VOC07-sized problem, and last the
   step alone as CUDA graphs (compile="graphs") against eager, then the fast path's run so;
4. accuracy smoke: kNN after epochs 1-3 of cifar10_demo's 200-epoch schedule on all of CIFAR-10,
   beside the official demo's 36.0 / 38.2 / 38.7;
5. with --full: the whole 200-epoch cifar10_demo against 82.6 (asymmetric) / 85.3 (--symmetric).

Writes report.md and report.json (default runs/gpu_check/) and prints the table. Without a GPU
it says so and exits 2; --cpu runs stages 1-3 at tiny sizes on the CPU (what CI runs).
"""
