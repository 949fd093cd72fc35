"""The machine check: each accelerated path against its reference on the GPU (marked `gpu`, skipped with
"no GPU" elsewhere), and `python -m mocolab.check --cpu` end to end, which CI runs on its CPU."""

import json
import subprocess
import sys

import pytest
import torch

from mocolab.check import paths, stages
from mocolab.check.__main__ import main

no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


@pytest.mark.gpu
@no_gpu
@pytest.mark.parametrize("name", list(paths.CHECKS))
def test_accelerated_path_agrees_with_its_reference_on_the_gpu(name):
    assert paths.CHECKS[name]("cuda")


@pytest.mark.slow
def test_the_cpu_check_runs_every_stage_and_writes_its_report(cifar10_root, tmp_path):
    """Stages 1-3 at tiny sizes, as CI runs them: every row passes, the report lists them all."""
    done = subprocess.run(
        [sys.executable, "-m", "mocolab.check", "--cpu", "--data-root", str(cifar10_root), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["rows"]
    assert report["mode"] == "cpu" and {r["stage"] for r in rows} == {"1 environment", "2 paths", "3 speed"}
    assert [r["check"] for r in rows if r["stage"] == "2 paths"] == list(paths.CHECKS)
    assert all(r["status"] in ("ok", "info") for r in rows), [r for r in rows if r["status"] not in ("ok", "info")]
    assert "the fast path is" in next(r["result"] for r in rows if r["check"] == "cifar10_demo: reference path")
    assert "ms per step of 64" in next(r["result"] for r in rows if r["check"] == "cifar10_demo: the step alone")
    graphs = next(r for r in rows if r["check"] == "cifar10_demo: the step as CUDA graphs vs eager")
    assert graphs["status"] == "info" and "need a GPU" in graphs["result"]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("\n| ") == len(rows) + 1 and "| 2 paths | kNN vs CPU | ok |" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_the_check_says_so_in_one_line_and_exits_2(capsys, tmp_path):
    assert main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is visible" in err and "--cpu" in err
    assert not (tmp_path / "report.json").exists()


def test_a_failing_check_is_reported_with_a_hint_and_a_spent_budget_skips_the_rest():
    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def disagrees():
        assert False, "loss 1.0 vs 2.0"

    def slow():
        import time

        time.sleep(0.3)
        return "done"

    rows = list(
        stages.run_stage(
            "2 paths", [("oom", out_of_memory), ("wrong", disagrees), ("slow", slow), ("late", slow)], budget=0.2
        )
    )
    assert [r.status for r in rows] == ["FAIL", "FAIL", "ok", "skipped"]
    assert "OutOfMemoryError: CUDA out of memory" in rows[0].result and "nvidia-smi" in rows[0].hint
    assert "loss 1.0 vs 2.0" in rows[1].result and "disagrees with its reference" in rows[1].hint
    assert "budget was spent" in rows[3].result
