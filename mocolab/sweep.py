"""Sweeps: one base recipe and named variants, each a pretraining run in its own folder.

    sweep = Sweep("runs/ablations/momentum", base={"preset": "cifar10_demo", "epochs": 6},
                  variants={"m=0": {"m": 0.0}, "m=0.99": {"m": 0.99}})
    sweep.run()                        # one run after another in this process (the CPU or one GPU)
    sweep.run(parallel=8, gpus=True)   # 8 runs at a time, each its own process with its own GPU
    print("\\n".join(sweep.commands()))  # one self-contained command per run, for a SLURM array
    rows = collect("runs/ablations/momentum")   # tidy rows, also written to results.csv

Every variant is validated before any run starts (an unknown key names the
variant and the key), and so is every folder: one that holds a run of other
settings (the base changed since) is refused rather than reported or continued
as the variant's. run() skips finished runs, resumes an interrupted one from
its checkpoint, and records a failing run's error in its folder's status.json
while the others go on. A run is finished when its metrics.csv reaches its last
epoch, however it was started, so `collect` also reads runs a scheduler ran from
`commands()`.

Several sweeps of one base recipe share runs: the base is a variant of most
ablations (m = 0.99 in the momentum sweep is T = 0.1 in the temperature sweep).
`run_sweeps` trains each distinct setting once and links the other variants'
folders to its run (`share_runs`), so that every sweep still reads as whole.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

from .config import EXECUTION_FIELDS, Config, ConfigError, make_config
from .run import preemption
from .run.job import RUN_REWRITES, read_json
from .run.device import visible_gpus
from .settings import format_value

SWEEP_REWRITES = "the sweep writes it again"
RUN_CONFIG = "sweep_config.json"  # the config a sweep's process runs, written into the run's folder

COLUMNS = (
    "variant",
    "setting",
    "state",
    "epoch",
    "loss",
    "acc",
    "pos_sim",
    "neg_sim",
    "knn_top1",
    "train_s",
    "knn_s",
    "error",
)


class Sweep:
    """A base recipe (a preset name under "preset", and overrides) and named variants of it."""

    def __init__(self, folder: str | Path, base: dict, variants: dict | list[tuple[str, dict]]):
        pairs = list(variants.items()) if isinstance(variants, dict) else list(variants)
        names = [name for name, _ in pairs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(f"variant names must differ; {twice} appear more than once")
        # Absolute: the runs' commands work from any folder, and a resumed run keeps its output_dir.
        self.folder, self.base, self.variants = Path(folder).resolve(), dict(base), dict(pairs)
        self.preset = self.base.pop("preset", "cifar10_demo")
        self.configs = {name: self._config(name, overrides) for name, overrides in self.variants.items()}

    def _config(self, name: str, overrides: dict) -> Config:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"variant name {name!r} cannot be a folder name; use letters, digits, '=', '.', '_'")
        try:
            return make_config(self.preset, **{**self.base, **overrides, "output_dir": str(self.folder / name)})
        except ConfigError as error:
            raise ConfigError(f"variant {name!r}: {error}") from None

    def overrides(self, name: str) -> dict:
        """The settings of a run on top of its preset: the base's, the variant's, its folder."""
        return {**self.base, **self.variants[name], "output_dir": str(self.folder / name)}

    def argv(self, name: str, resume: bool) -> list[str]:
        """`python -m mocolab --preset ... key=value ...` for one variant, as a list of arguments."""
        args = [f"{key}={format_value(value)}" for key, value in {**self.overrides(name), "resume": resume}.items()]
        return [sys.executable, "-m", "mocolab", "--preset", self.preset, *args]

    def command(self, name: str) -> str:
        """The shell command that runs one variant by itself, and resumes it when its folder holds a checkpoint
        (a job array's retry continues where the run stopped)."""
        checkpoint = shlex.quote(str(Path(self.configs[name].output_dir).resolve() / "checkpoint_last.pt"))
        line = shlex.join(self.argv(name, resume=False))
        return line.replace("resume=False", f"resume=$(test -e {checkpoint} && echo True || echo False)")

    def commands(self) -> list[str]:
        """One command per variant: hand them to a job array, then `collect` the folder."""
        self._write_plan()
        return [self.command(name) for name in self.configs if not self.shared(name)]

    def state(self, name: str) -> str:
        """ "done", "failed", "started" or "new"."""
        return run_state(self.folder / name, self.configs[name])

    def shared(self, name: str) -> bool:
        """Whether the variant's folder links to another variant's run (share_runs), which trains it."""
        return (self.folder / name).is_symlink()

    def differences(self, name: str) -> dict:
        """{field: (in the folder's config.json, the variant's)} for the fields that change what the run
        computes; empty when the folder holds no run yet or a run of these settings."""
        saved = _saved_config(self.folder / name)
        now = settings(self.configs[name])
        return {key: (saved[key], now[key]) for key in now if key in saved and saved[key] != now[key]}

    def check_folders(self) -> None:
        """Refuse, before any run, a variant whose folder holds a run of other settings: skipping it as done or
        resuming it would report that run as this variant's."""
        for name in self.configs:
            changed = self.differences(name)
            if changed:
                listed = "; ".join(f"{key}: {was!r} there, {now!r} now" for key, (was, now) in changed.items())
                raise ConfigError(
                    f"{self.folder / name} holds a run of other settings than variant {name!r} "
                    f"({listed}). Delete that folder to run the variant again, or give the sweep "
                    f"another folder"
                )

    def run(self, parallel: int = 1, gpus: bool = False, progress: bool = True) -> list[dict]:
        """Run every variant not done yet; returns collect()'s rows.

        parallel=1: one after another in this process. parallel=N: N at a time, each in its own
        process; with gpus=True each process sees one GPU (CUDA_VISIBLE_DEVICES), else the CPU
        cores are shared out among them.
        """
        _check_gpus(parallel, gpus)
        self.check_folders()
        return self._run_checked(parallel, gpus, progress)

    def _run_checked(self, parallel: int, gpus: bool, progress: bool) -> list[dict]:
        """run() once the GPUs asked for and the folders are checked."""
        todo = self.plan(parallel, progress)
        if parallel == 1:
            for name in todo:
                self._run_here(name, progress)
        else:
            run_in_processes([(self, name) for name in todo], parallel, gpus, progress)
        return collect(self.folder)

    def plan(self, parallel: int = 1, progress: bool = True) -> list[str]:
        """Write sweep.json and say what is done, shared and to run; returns the variants to run."""
        self._write_plan()
        shared = [name for name in self.configs if self.shared(name)]
        todo = [name for name in self.configs if self.state(name) != "done" and name not in shared]
        if progress:
            done = len(self.configs) - len(todo) - len(shared)
            print(
                f"sweep {self.folder}: {len(self.configs)} runs, {done} already done, "
                + (f"{len(shared)} shared with another sweep ({', '.join(shared)}), " if shared else "")
                + f"{len(todo)} to run"
                + (f", {parallel} at a time" if parallel > 1 else ""),
                flush=True,
            )
        return todo

    def run_config(self, name: str) -> Config:
        """The variant's config as a run starts it: resumed when its folder holds a checkpoint."""
        cfg = self.configs[name]
        return dataclasses.replace(cfg, resume=(Path(cfg.output_dir) / "checkpoint_last.pt").exists())

    def _run_here(self, name: str, progress: bool) -> None:
        from .pretraining import pretrain

        tic = time.perf_counter()
        try:
            pretrain(self.run_config(name), progress=progress)
        except preemption.Preempted:  # a stop signal stops the sweep, not just this variant
            raise
        except Exception as error:  # recorded; the other variants still run
            _write_status(self.folder / name, "failed", f"{type(error).__name__}: {error}", traceback.format_exc())
            warnings.warn(
                f"variant {name!r} failed ({type(error).__name__}: {error}); the sweep goes on and "
                f"{self.folder / name / 'status.json'} records the error",
                stacklevel=3,
            )
        else:
            _write_status(self.folder / name, "done")
            if progress:
                print(f"{name}: done in {time.perf_counter() - tic:.0f} s", flush=True)

    def _write_plan(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        plan = {"preset": self.preset, "base": self.base, "variants": self.variants}
        (self.folder / "sweep.json").write_text(json.dumps(plan, indent=2))


def _check_gpus(parallel: int, gpus: bool) -> None:
    if gpus and parallel > visible_gpus():
        raise ConfigError(
            f"parallel={parallel} runs on one GPU each, but this machine has "
            f"{visible_gpus()} GPU(s); use parallel={max(visible_gpus(), 1)}"
            + ("" if visible_gpus() else " without gpus=True")
        )


def run_in_processes(jobs: list[tuple[Sweep, str]], parallel: int, gpus: bool, progress: bool) -> None:
    """Run (sweep, variant) jobs `parallel` at a time, each `python -m mocolab` in its own process (with one GPU
    each when gpus=True, else a share of the CPU threads), as slots free up; a failure is recorded in status.json."""
    several = len({id(sweep) for sweep, _ in jobs}) > 1
    threads = max(1, (os.cpu_count() or 1) // parallel)
    jobs, free, running = list(jobs), list(range(parallel)), {}
    with preemption.StopSignals(("SIGTERM", "SIGUSR1")) as stop:
        try:
            _pool(jobs, free, running, several, threads, gpus, progress, stop)
        except KeyboardInterrupt:
            _stop_runs(running, signal.SIGINT, progress)
            raise


def _stop_runs(running: dict, sig: signal.Signals, progress: bool) -> None:
    """Pass `sig` on to the running runs and wait for them (a minute, then kill): no run trains on as an orphan.
    On a stop signal each saves its position and exits REQUEUE; the next run() resumes it."""
    for process, *_ in running.values():
        process.send_signal(sig)
    for label, (process, slot, out, folder, tic) in running.items():
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()
        if progress:
            print(f"{label}: stopped by {sig.name} (exit status {process.returncode})", flush=True)
    running.clear()


def _pool(jobs, free, running, several, threads, gpus, progress, stop) -> None:
    """run_in_processes' loop: start jobs into free slots, record the ones that end, stop all on a stop signal."""
    while jobs or running:
        if stop.received:
            names = ", ".join(running)
            _stop_runs(running, signal.Signals[stop.received], progress)
            raise preemption.Preempted(
                f"sweep stopped by {stop.received}: the running runs ({names}) saved their position; run the "
                f"sweep again to resume them and start the {len(jobs)} not started"
            )
        while jobs and free:
            (sweep, name), slot = jobs.pop(0), free.pop(0)
            folder = sweep.folder / name
            label = f"{sweep.folder.name}/{name}" if several else name
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot)
            folder.mkdir(parents=True, exist_ok=True)
            out = open(folder / "output.txt", "w")
            # The config itself, not key=value text to parse back: argv is only for the printed commands.
            (folder / RUN_CONFIG).write_text(json.dumps(sweep.run_config(name).to_dict(), indent=2))
            command = [sys.executable, "-m", "mocolab", "--config", str(folder / RUN_CONFIG)]
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            running[label] = (process, slot, out, folder, time.perf_counter())
            if progress:
                print(f"{label}: started" + (f" on GPU {slot}" if gpus else ""), flush=True)
        time.sleep(0.5)
        for label, (process, slot, out, folder, tic) in list(running.items()):
            if process.poll() is None:
                continue
            out.close()
            del running[label]
            free.append(slot)
            if process.returncode == 0:
                _write_status(folder, "done")
                message = f"done in {time.perf_counter() - tic:.0f} s"
            elif process.returncode == preemption.REQUEUE:  # its own stop signal: saved; the next run() resumes it
                _write_status(folder, "stopped")
                message = "stopped by a stop signal, its position saved; the next run() resumes it"
            else:
                tail = (folder / "output.txt").read_text().strip().splitlines()[-1:] or ["?"]
                _write_status(folder, "failed", f"exit status {process.returncode}: {tail[0]}")
                message = f"FAILED ({tail[0]}); see {folder / 'output.txt'}"
            if progress:
                print(f"{label}: {message}", flush=True)


def settings(cfg: Config) -> dict:
    """What a run computes: its config without the execution fields (config.EXECUTION_FIELDS), as config.json
    stores it. A folder that differs from a variant only in those holds that variant's run, and two variants
    that differ only in those are one run."""
    return {key: value for key, value in json.loads(json.dumps(cfg.to_dict())).items() if key not in EXECUTION_FIELDS}


def _saved_config(folder: Path) -> dict:
    """The config a run folder's config.json records (empty when there is none yet)."""
    try:
        return read_json(folder / "config.json", RUN_REWRITES).get("config", {})
    except FileNotFoundError:
        return {}


def share_runs(sweeps: list[Sweep]) -> dict[Path, Path]:
    """Link each variant whose settings equal an earlier variant's (in these sweeps, in order) to that variant's
    folder, so that one run serves both; returns {linked folder: the run's folder}.

    A link is relative (the sweeps' folder can move). A variant folder holding a run of its own is kept, and
    links from an earlier call are decided afresh. Where links cannot be made (Windows without the right), the
    variant is simply trained again.
    """
    first, links = {}, {}
    for sweep in sweeps:
        for name, cfg in sweep.configs.items():
            folder, key = sweep.folder / name, json.dumps(settings(cfg), sort_keys=True)
            if folder.is_symlink():
                folder.unlink()
            if key not in first:
                first[key] = folder
                continue
            if folder.exists():
                continue
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                folder.symlink_to(os.path.relpath(first[key], folder.parent), target_is_directory=True)
            except OSError:
                continue
            links[folder] = first[key]
    return links


def run_sweeps(
    sweeps: dict[str, Sweep], parallel: int = 1, gpus: bool = False, progress: bool = True
) -> dict[str, list[dict]]:
    """Run several sweeps, each distinct setting once (share_runs); every folder is checked first, so a refusal
    comes before any run. parallel=1: one sweep after another in this process; parallel=N: one pool of N
    processes over all the sweeps' runs, so that N GPUs stay busy however few variants each sweep has.
    Returns {sweep name: its collect() rows}."""
    _check_gpus(parallel, gpus)
    links = share_runs(list(sweeps.values()))
    for sweep in sweeps.values():
        sweep.check_folders()
    if progress and links:
        print(
            f"{len(links)} variant(s) have the settings of a run in an earlier sweep and share its folder: "
            + ", ".join(
                f"{link.parent.name}/{link.name} -> {run.parent.name}/{run.name}" for link, run in links.items()
            ),
            flush=True,
        )
    if parallel == 1:
        return {name: sweep._run_checked(1, False, progress) for name, sweep in sweeps.items()}
    jobs = [(sweep, variant) for sweep in sweeps.values() for variant in sweep.plan(parallel, progress)]
    run_in_processes(jobs, parallel, gpus, progress)
    return {name: collect(sweep.folder) for name, sweep in sweeps.items()}


def run_state(folder: Path, cfg: Config) -> str:
    """ "done" when metrics.csv reaches the run's last epoch; "failed" when its status says so; "started"
    with a checkpoint; else "new"."""
    metrics = folder / "metrics.csv"
    if metrics.exists():
        epochs = [int(row["epoch"]) for row in finished_rows(metrics)]
        if epochs and max(epochs) >= cfg.final_epoch:
            return "done"
    status = folder / "status.json"
    if status.exists() and read_json(status, SWEEP_REWRITES).get("state") == "failed":
        return "failed"
    return "started" if (folder / "checkpoint_last.pt").exists() else "new"


def finished_rows(metrics: Path) -> list[dict]:
    """The rows of a metrics.csv that are whole: a last row cut short (a copy interrupted, a full disk) is
    not an epoch finished."""
    return [row for row in csv.DictReader(open(metrics)) if None not in row.values() and None not in row]


def _write_status(folder: Path, state: str, error: str = "", trace: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text(json.dumps({"state": state, "error": error, "traceback": trace}, indent=2))


def setting(overrides: dict) -> str:
    """A variant's overrides as one readable string: "m=0.9, K=1024"."""
    return ", ".join(f"{key}={value}" for key, value in overrides.items()) or "(base)"


def collect(folder: str | Path) -> list[dict]:
    """The sweep's runs as tidy rows (one per variant and epoch; a run without epochs, one row with its state
    and error), written to folder/results.csv too."""
    folder = Path(folder)
    if not (folder / "sweep.json").exists():
        raise FileNotFoundError(
            f"{folder} holds no sweep.json, so it is not a sweep's folder (Sweep.run and "
            f"Sweep.commands write it); pass the folder given to Sweep"
        )
    plan = read_json(folder / "sweep.json", SWEEP_REWRITES)
    sweep = Sweep(folder, {"preset": plan["preset"], **plan["base"]}, plan["variants"])
    rows = []
    for name, cfg in sweep.configs.items():
        state = sweep.state(name)
        status = folder / name / "status.json"
        error = read_json(status, SWEEP_REWRITES).get("error", "") if status.exists() and state == "failed" else ""
        metrics = folder / name / "metrics.csv"
        epochs = finished_rows(metrics) if metrics.exists() else []
        for row in epochs or [{}]:
            rows.append(
                {
                    "variant": name,
                    "setting": setting(plan["variants"][name]),
                    "state": state,
                    **{key: _number(row.get(key)) for key in COLUMNS[3:-1]},
                    "error": error,
                }
            )
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _number(text):
    if text in (None, ""):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def final(rows: list[dict]) -> dict[str, dict]:
    """{variant: its last epoch's row} (the state alone for a run without epochs)."""
    last = {}
    for row in rows:
        if row["epoch"] is not None or row["variant"] not in last:
            last[row["variant"]] = row
    return last
