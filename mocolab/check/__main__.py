"""python -m mocolab.check [--cpu] [--full [--symmetric] [--compile WAY]] [--data-root DIR] [--out DIR]: see
mocolab.check."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..ui import project
from ..run.job import atomic_write_text
from . import paths, stages, step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mocolab.check", description=__doc__)
    parser.add_argument("--cpu", action="store_true", help="stages 1-3 at tiny sizes on the CPU (for CI)")
    parser.add_argument("--full", action="store_true", help="also the whole 200-epoch cifar10_demo (stage 5)")
    parser.add_argument("--symmetric", action="store_true", help="stage 5 with the demo's symmetric loss")
    parser.add_argument(
        "--compile",
        choices=list(step.COMPILE_WAYS),
        default="none",
        help="stage 5 compiled: the encoders, the whole step (model) or the whole step as CUDA graphs (graphs); "
        "stage 3's last rows say which is fastest",
    )
    parser.add_argument(
        "--data-root",
        default="",
        help="CIFAR-10 as an ImageFolder (train/, test/); "
        "default: torchvision's CIFAR-10 in <project>/data, downloaded when missing",
    )
    parser.add_argument("--out", default="", help="where report.md and report.json go (default runs/gpu_check)")
    args = parser.parse_args(argv)

    if not args.cpu and not torch.cuda.is_available():
        print(
            "no CUDA GPU is visible to torch (torch.cuda.is_available() is False): run this on a GPU machine, "
            "or pass --cpu for the tiny CPU version of stages 1-3",
            file=sys.stderr,
        )
        return 2
    sizes = stages.Sizes.cpu() if args.cpu else stages.Sizes.gpu()
    dataset, data_root = (
        ("imagefolder", args.data_root) if args.data_root else ("cifar10", str(project.home() / "data"))
    )
    out = Path(args.out) if args.out else project.home() / "runs" / "gpu_check"
    out.mkdir(parents=True, exist_ok=True)
    # The runs, checkpoints and generated JPEGs (hundreds of MB with ResNet-50) go once the report is written.
    with tempfile.TemporaryDirectory(prefix="mocolab-check-") as work:
        return check(args, sizes, dataset, data_root, out, Path(work))


def check(args, sizes: stages.Sizes, dataset: str, data_root: str, out: Path, work: Path) -> int:
    """Run the stages in order, writing the report after every row; 1 when a row failed."""
    plan = [
        ("1 environment", stages.environment(sizes.device), sizes.budgets["environment"]),
        (
            "2 paths",
            [(name, lambda fn=fn: fn(sizes.device)) for name, fn in paths.CHECKS.items()],
            sizes.budgets["paths"],
        ),
    ]
    speed = stages.Speed(sizes, dataset, data_root, work)
    plan.append(("3 speed", speed.checks(), sizes.budgets["speed"]))
    if not args.cpu:
        plan.append(("4 accuracy", stages.accuracy(speed), sizes.budgets["accuracy"]))
    if args.full and not args.cpu:
        full = stages.full_run(dataset, data_root, work, args.symmetric, step.COMPILE_WAYS[args.compile])
        plan.append(("5 full run", full, float("inf")))

    tic, rows = time.perf_counter(), []
    print(
        f"mocolab machine check on {'the CPU (--cpu, tiny sizes)' if args.cpu else 'the GPU'}; report in {out}",
        flush=True,
    )
    for stage, checks, budget in plan:
        for row in stages.run_stage(stage, checks, budget):
            rows.append(row)
            print(
                f"  [{row.status}] {row.stage} / {row.check}: {row.result}"
                + (f"  (hint: {row.hint})" if row.hint else ""),
                flush=True,
            )
            write_report(rows, out, time.perf_counter() - tic, args)  # after each row: a crash keeps the rest
    print(table(rows))
    failed = [r for r in rows if r.status == "FAIL"]
    print(
        f"{len(rows) - len(failed)} of {len(rows)} rows passed in {(time.perf_counter() - tic) / 60:.1f} min; "
        f"report: {out / 'report.md'}"
    )
    return 1 if failed else 0


def table(rows: list[stages.Row]) -> str:
    lines = ["| stage | check | status | s | result |", "|---|---|---|---|---|"]
    for r in rows:
        result = r.result + (f" *Hint: {r.hint}*" if r.hint else "")
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else ""
        lines.append(f"| {r.stage} | {r.check} | {r.status} | {seconds} | {result.replace('|', '/')} |")
    return "\n".join(lines)


def write_report(rows: list[stages.Row], out: Path, seconds: float, args) -> None:
    meta = {
        "mode": "cpu" if args.cpu else "gpu",
        "full": args.full,
        "seconds": round(seconds, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    report = {**meta, "rows": [dataclasses.asdict(r) for r in rows]}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    title = "# mocolab machine check" + (" (--cpu: tiny sizes, stages 1-3)" if args.cpu else "")
    atomic_write_text(out / "report.md", f"{title}\n\n{meta['when']}, {seconds / 60:.1f} min\n\n{table(rows)}\n")


if __name__ == "__main__":
    sys.exit(main())
