"""Notebook 06's ablation lab: its parameters as a validated config, and the plan they make.

    lab = AblationLab(LabConfig(ablations_to_run="momentum,shuffle_bn", preset="auto"))
    print(lab.summary())   # the base recipe, how many variants and how many runs to train
    results = lab.run()    # or, with executor="commands", one shell command per run in commands.sh
    lab.figure(results, "momentum")  # kNN and loss curves of one ablation's variants

Every sweep is built, and every variant validated as a Config, when the lab is
made, before any run starts. The base recipe is a variant of several ablations
(m = 0.99 is also K = 4096 and T = 0.1): each distinct setting is trained once,
the other variants' folders link to its run (sweep.share_runs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import settings, viz
from .ablations import ABLATIONS, read_ablations, sweep_for
from .config import resolve_preset
from .data import DATASETS
from .run.device import visible_gpus
from .ui.project import project_path
from .sweep import run_sweeps, share_runs

EXECUTORS = ("auto", "inline", "gpus", "processes", "commands")


@dataclass(frozen=True)
class LabConfig:
    """Which ablations, on which base recipe, run how (notebook 06's parameters cell)."""

    ablations_to_run: tuple[Literal[tuple(ABLATIONS)], ...] = tuple(ABLATIONS)  # or a comma-separated string
    variants: dict = field(default_factory=dict)  # {ablation: [variant names]}: only these; empty: all
    preset: str = "auto"  # "auto": cifar10_demo shortened on a GPU, the cifar10_cpu lesson without one
    epochs: int | None = None  # per run; None: 8 on a GPU, 3 with the CPU recipe
    train_subset: int | None = None  # None: all images on a GPU, 10,000 with the CPU recipe
    dataset: Literal[DATASETS] = "cifar10"
    data_root: str = "data"
    knn_bank_size: int | None = None  # None: the recipe's
    knn_test_size: int | None = None
    executor: Literal[EXECUTORS] = "auto"  # "auto": gpus with several GPUs, else inline
    parallel: int = 0  # runs at a time for "gpus" / "processes"; 0: every visible GPU, or 2 processes
    extra: dict = field(default_factory=dict)  # more settings for every run
    seed: int = 0  # the first seed
    seeds: int | None = None  # runs per variant (seed, seed + 1, ...); None: 2 with the CPU recipe, 3 on a GPU
    output_dir: str = "runs/ablations"

    def __post_init__(self):
        settings.check_fields(self)
        unknown = sorted(set(self.variants) - set(self.ablations_to_run))
        settings.need(
            not unknown,
            f"variants names ablations {unknown} that are not in ablations_to_run "
            f"{list(self.ablations_to_run)}: add them there or drop them from variants",
        )
        settings.need(self.parallel >= 0, f"parallel must be 0 (automatic) or more, got {self.parallel}")
        settings.need(self.seeds is None or self.seeds >= 1, f"seeds must be 1 or more (or None), got {self.seeds}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class AblationLab:
    """The sweeps of a LabConfig, built and validated, with how they will run."""

    def __init__(self, cfg: LabConfig):
        self.cfg = cfg
        self.preset, _ = resolve_preset(cfg.preset)
        self.on_cpu = self.preset == "cifar10_cpu"
        self.base = self._base_recipe()
        self.executor = cfg.executor if cfg.executor != "auto" else "gpus" if visible_gpus() > 1 else "inline"
        if self.executor in ("inline", "commands"):
            self.parallel = 1
        else:
            self.parallel = cfg.parallel or (visible_gpus() if self.executor == "gpus" else 2)
        if self.executor == "processes":
            self.base["gpus"] = 0
        self.output_dir = Path(project_path(cfg.output_dir))
        # Several seeds per variant, so that a verdict can say when a difference is within the runs' noise.
        self.seeds = cfg.seeds or (2 if self.on_cpu else 3)
        self.sweeps = {
            n: sweep_for(n, self.output_dir, self.base, cfg.variants.get(n), self.seeds) for n in cfg.ablations_to_run
        }
        self.shared = share_runs(list(self.sweeps.values()))

    def _base_recipe(self) -> dict:
        """The preset, shortened for a lab; the kNN on the backbone's pool, so linear and MLP heads compare
        fairly (ablations' docstring)."""
        cfg = self.cfg
        base = {
            "preset": self.preset,
            "dataset": cfg.dataset,
            "data_root": str(project_path(cfg.data_root)),
            "seed": cfg.seed,
            "knn_every": 1,
            "knn_feature": "avgpool",
            "epochs": cfg.epochs or (3 if self.on_cpu else 8),
            **cfg.extra,
        }
        subset = cfg.train_subset if cfg.train_subset is not None else (10000 if self.on_cpu else None)
        for key, value in {
            "train_subset": subset,
            "knn_bank_size": cfg.knn_bank_size,
            "knn_test_size": cfg.knn_test_size,
        }.items():
            if value is not None:
                base[key] = value
        return base

    def summary(self) -> str:
        runs = sum(len(s.configs) for s in self.sweeps.values())
        images = f"{self.base['train_subset']:,}" if self.base.get("train_subset") else "all the"
        at_a_time = f", {self.parallel} at a time" if self.parallel > 1 else ""
        return (
            f"base recipe: {self.preset} ({'no GPU visible' if self.on_cpu else 'a GPU'}); "
            f"{self.base['epochs']} epochs of {images} training images per run\n"
            f"{len(self.sweeps)} ablations, {runs // self.seeds} variants x {self.seeds} seed(s), "
            f"{runs - len(self.shared)} runs to train, "
            f"executor {self.executor!r}{at_a_time}"
        )

    def run(self) -> dict[str, list[dict]]:
        """Train what is not trained yet (or, with executor "commands", write commands.sh and train nothing);
        the rows of every ablation found in output_dir."""
        if self.executor == "commands":
            lines = [command for sweep in self.sweeps.values() for command in sweep.commands()]
            (self.output_dir / "commands.sh").write_text("\n".join(lines) + "\n")
            print(f"{len(lines)} commands in {self.output_dir / 'commands.sh'}; the first:\n{lines[0]}")
        else:
            run_sweeps(self.sweeps, parallel=self.parallel, gpus=self.executor == "gpus")
        return read_ablations(self.output_dir, list(self.sweeps))

    def figure(self, results: dict[str, list[dict]], name: str):
        """One ablation's kNN and loss curves (saved as output_dir/<name>.png), or None with a line saying why."""
        if name not in results:
            print(f"{name}: not in ablations_to_run")
            return None
        return viz.plot_sweep(results[name], name, save_to=self.output_dir / f"{name}.png")
