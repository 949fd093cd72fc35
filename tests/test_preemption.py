"""Preemption: a stop signal mid-epoch saves the position, and resuming continues exactly as if never stopped."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import mocolab.pretraining
import mocolab.train
from mocolab import make_config, pretrain
from mocolab.run.checkpoint import load_checkpoint
from mocolab.run.preemption import REQUEUE, Preempted, StopSignals, signal_names
from mocolab.settings import ConfigError

TIMING = {"train_s", "knn_s", "images_per_s"}  # metrics.csv's clock readings: the only columns that may differ


def tiny(cifar10_root, folder, **kw):
    return make_config("tiny", dataset="imagefolder", gpus=0, data_root=str(cifar10_root), output_dir=str(folder), **kw)


def overrides(cfg) -> list[str]:
    """The command-line form of a tiny config (what `python -m mocolab --preset tiny` takes)."""
    keys = ("dataset", "gpus", "data_root", "output_dir", "epochs", "train_subset", "knn_every", "processes")
    return [f"{key}={getattr(cfg, key)}" for key in keys]


def rows(path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(open(path))]


def assert_same_run(a, b) -> None:
    """Every tensor of the two runs' last checkpoints (model with queue, optimiser) equal, and their CSVs."""
    sa, sb = load_checkpoint(a / "checkpoint_last.pt"), load_checkpoint(b / "checkpoint_last.pt")
    assert sa["model"].keys() == sb["model"].keys()
    for name in sa["model"]:
        assert torch.equal(sa["model"][name], sb["model"][name]), name
    for x, y in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    assert rows(a / "metrics.csv") == rows(b / "metrics.csv")
    assert rows(a / "steps.csv") == rows(b / "steps.csv")


def crashing_in_step(n: int):
    """A Trainer.step that raises KeyboardInterrupt in its n-th call: a crash inside an epoch."""
    real, calls = mocolab.train.Trainer.step, []

    def step(self, *args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("simulated crash")
        return real(self, *args)

    return step


# Sends this process SIGTERM from inside the 6th training step, then runs the command line: a real signal,
# delivered at a known step (tiny: 4 steps an epoch, so step 2 of epoch 2).
SIGTERM_AT_STEP_6 = """
import os, signal, sys
import mocolab.train
from mocolab.__main__ import main
from mocolab.ui import cli
real, calls = mocolab.train.Trainer.step, []
def step(self, *args):
    calls.append(1)
    if len(calls) == 6:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(self, *args)
mocolab.train.Trainer.step = step
sys.exit(cli.run(main, sys.argv[1:], prog="python -m mocolab"))
"""


def same_threads() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same sums as this process's


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_step_and_resume_equals_the_uninterrupted_run(cifar10_root, tmp_path):
    straight = tiny(cifar10_root, tmp_path / "a", epochs=2)
    pretrain(straight, progress=False)
    stopped = tiny(cifar10_root, tmp_path / "b", epochs=2)
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_AT_STEP_6, "--preset", "tiny", *overrides(stopped)],
        capture_output=True,
        text=True,
        env=same_threads(),
        timeout=300,
    )
    assert done.returncode == REQUEUE, done.stderr[-3000:]
    assert "stopped by SIGTERM after step 2 of epoch 2" in done.stderr and "resume=True" in done.stderr
    state = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert state["epoch"] == 1 and state["position"]["step"] == 2 and len(state["steps"]) == 3  # log_every=2
    assert "stopped by SIGTERM: saved step 2 of epoch 2" in (tmp_path / "b" / "log.txt").read_text()

    pretrain(tiny(cifar10_root, tmp_path / "b", epochs=2, resume=True), progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_checkpoint_every_steps_lets_a_crash_inside_an_epoch_resume_exactly(cifar10_root, tmp_path, monkeypatch):
    """A crash (here an interrupt in step 7) loses only the steps since the last checkpoint_every_steps."""
    pretrain(tiny(cifar10_root, tmp_path / "a", epochs=2), progress=False)
    monkeypatch.setattr(mocolab.train.Trainer, "step", crashing_in_step(7))
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(cifar10_root, tmp_path / "b", epochs=2, checkpoint_every_steps=3), progress=False)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert (state["epoch"], state["position"]["step"]) == (1, 2)  # global step 6 = step 2 of epoch 2
    assert "checkpoint_every_steps=3: saved step 2 of epoch 2" in (tmp_path / "b" / "log.txt").read_text()
    pretrain(tiny(cifar10_root, tmp_path / "b", epochs=2, resume=True, checkpoint_every_steps=3), progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_two_processes_stop_after_the_same_step_and_resume_exactly(cifar10_root, tmp_path):
    """SIGTERM to the launching process reaches both gloo processes; they agree on the step, rank 0 saves every
    process's running sums, the launcher exits 75, and the resumed pair equals an uninterrupted pair."""
    long_epochs = dict(epochs=1, train_subset=256, knn_every=0, processes=2)  # 16 steps
    pretrain(tiny(cifar10_root, tmp_path / "a", **long_epochs), progress=False)
    stopped = tiny(cifar10_root, tmp_path / "b", **long_epochs)
    process = subprocess.Popen(
        [sys.executable, "-m", "mocolab", "--preset", "tiny", *overrides(stopped)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=same_threads(),
    )
    started = tmp_path / "b" / "config.json"  # rank 0 writes it as training starts
    deadline = time.monotonic() + 240
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # in the first steps
    out, err = process.communicate(timeout=120)
    assert process.returncode == REQUEUE, err[-3000:]
    state = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert state["epoch"] == 0 and 0 < state["position"]["step"] < 16 and state["position"]["totals"].shape == (2, 4)
    assert f"stopped by SIGTERM: saved step {state['position']['step']} of epoch 1" in err

    pretrain(tiny(cifar10_root, tmp_path / "b", **long_epochs, resume=True), progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_stop_signal_is_noted_not_obeyed_and_the_old_handler_comes_back():
    previous = signal.getsignal(signal.SIGUSR1)
    with StopSignals(("SIGTERM", "SIGUSR1")) as stop:
        assert stop.requested() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # the handler runs at the next bytecode boundary
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() == "SIGUSR1"  # the first one, and this process is still running
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_stop_signals_are_checked_in_the_config_and_resuming_with_other_processes_is_refused(
    cifar10_root, tmp_path, monkeypatch
):
    assert signal_names(" sigterm, SIGUSR2 ") == ("SIGTERM", "SIGUSR2") and signal_names("") == ()
    with pytest.raises(ConfigError, match="stop_signals='SIGKILL'.*not a signal a process can catch"):
        tiny(cifar10_root, tmp_path, stop_signals="SIGKILL")
    with pytest.raises(ConfigError, match="T must be a finite number, got inf"):
        tiny(cifar10_root, tmp_path, T=float("1e400"))
    with pytest.raises(ConfigError, match="lr must be a finite number, got nan"):
        tiny(cifar10_root, tmp_path, lr=float("nan"))
    saved = {"epoch": 3, "position": {"step": 5, "world": 2}}
    with pytest.raises(Exception, match="stopped inside epoch 4 with 2 processes; resume it with 2"):
        mocolab.pretraining._saved_position(saved, 1)
    assert issubclass(Preempted, Exception) and REQUEUE == 75


# A sweep of two tiny variants run two at a time, as a scheduler would start it.
SWEEP = """
import sys
from mocolab.run.preemption import Preempted
from mocolab.sweep import Sweep
base = dict(preset="tiny", dataset="imagefolder", gpus=0, data_root=sys.argv[2], epochs=1, train_subset=256,
            knn_every=0)
try:
    Sweep(sys.argv[1], base, {"m=0.9": {"m": 0.9}, "m=0.99": {"m": 0.99}}).run(parallel=2)
except Preempted as stop:
    print(stop)
    sys.exit(stop.exit_code)
"""


def alive_under(folder) -> list[int]:
    """The pids of processes whose command line names `folder` (a sweep's runs name their config file there)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and str(folder) in open(f"/proc/{entry}/cmdline").read():
                pids.append(int(entry))
        except OSError:  # it ended while we looked
            pass
    return pids


@pytest.mark.slow
def test_a_stopped_sweep_stops_its_runs_and_a_rerun_resumes_them(cifar10_root, tmp_path):
    folder = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "-c", SWEEP, str(folder), str(cifar10_root)], stdout=subprocess.PIPE, text=True
    )
    configs = [folder / name / "config.json" for name in ("m=0.9", "m=0.99")]
    deadline = time.monotonic() + 240
    while not all(c.exists() for c in configs) and time.monotonic() < deadline:
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)  # both runs are training
    out, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == REQUEUE, out
    assert "sweep stopped by SIGTERM" in out and "saved their position" in out
    assert alive_under(folder) == []  # no run trains on as an orphan
    for name in ("m=0.9", "m=0.99"):
        assert "stopped by SIGTERM" in (folder / name / "log.txt").read_text()
    from mocolab.sweep import Sweep

    base = dict(
        preset="tiny",
        dataset="imagefolder",
        gpus=0,
        data_root=str(cifar10_root),
        epochs=1,
        train_subset=256,
        knn_every=0,
    )
    rows = Sweep(folder, base, {"m=0.9": {"m": 0.9}, "m=0.99": {"m": 0.99}}).run(progress=False)
    assert {r["variant"]: (r["state"], r["epoch"]) for r in rows} == {"m=0.9": ("done", 1), "m=0.99": ("done", 1)}
