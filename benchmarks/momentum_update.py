"""The momentum update two ways: one operation pair per tensor, or two fused list operations (mocolab.moco).

    python benchmarks/momentum_update.py

For ResNet-18 (CIFAR stem) and ResNet-50 with the MLP head: the operations each form dispatches (counted with
a TorchDispatchMode; on a GPU each is a kernel launch) and its time on this machine's CPU, one thread. The
GPU gain is in the launches: a step there is bound by them, not by arithmetic (issue 26's profile).
"""

import time

import torch

from mocolab.check.operations import Operations
from mocolab.models import build_encoder
from mocolab.moco import momentum_average_


def per_tensor(theta_k, theta_q, m):
    for k, q in zip(theta_k, theta_q):
        k.mul_(m).add_(q, alpha=1 - m)


def main(m: float = 0.99, repeats: int = 20) -> None:
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    for arch, stem in (("resnet18", True), ("resnet50", False)):
        theta_q, theta_k = (list(build_encoder(arch, cifar_stem=stem, head="mlp").parameters()) for _ in "qk")
        for name, update in (("per tensor", per_tensor), ("fused", momentum_average_)):
            with Operations() as ops:
                update(theta_k, theta_q, m)
            tic = time.perf_counter()
            for _ in range(repeats):
                update(theta_k, theta_q, m)
            ms = (time.perf_counter() - tic) / repeats * 1e3
            print(f"{arch} ({len(theta_k)} tensors), {name:10s}: {ops.total:4d} operations, {ms:6.2f} ms on the CPU")


if __name__ == "__main__":
    main()
