"""The papers' ablations at CIFAR-10 scale, as sweeps of one base recipe, each with its claim and a verdict.

    sweep = sweep_for("momentum", "runs/ablations", base={...})   # one ablation's variants as a Sweep
    claims_table(read_ablations("runs/ablations"))   # the claim, its source, the paper's number, here, the verdict

Notebook 06 plans and runs them through mocolab.ablation_lab.

Every ablation is a `Sweep` (mocolab.sweep) of named variants of one base recipe
(cifar10_demo shortened, by default), so its runs are resumable, run one after
another or one per GPU, and read back with `collect`. The kNN read everywhere is
the monitor's top-1 on the backbone's average pool (knn_feature="avgpool"), the
feature a linear probe sees, so that a linear and an MLP head are compared on
the same footing.

Sources (docs/protocols.md, section 1, lists each): MoCo v1 = He et al., "Momentum Contrast
for Unsupervised Visual Representation Learning", CVPR 2020; MoCo v2 = Chen et
al., "Improved Baselines with Momentum Contrastive Learning", 2020; the demo =
the official CIFAR-10 demo notebook of facebookresearch/moco.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Config, make_config
from .sweep import Sweep, collect, final


@dataclass(frozen=True)
class Ablation:
    name: str
    variants: dict[str, dict] | Callable[[Config], dict[str, dict]]  # variant name -> overrides of the base
    # recipe, or a function of the base recipe's config giving them
    claim: str
    source: str
    paper: str  # the paper's numbers, "" when the source states none
    holds: Callable[[dict[str, float]], bool]  # given {variant: final kNN top-1}: does the claim's direction hold?
    test: str  # the verdict's rule, in words


def _queue_sizes(base: Config) -> dict[str, dict]:
    """K from one batch to 16384. The queue takes a whole batch of keys per step, so K must be a multiple of
    the global batch (the official code asserts K % batch_size == 0): the smallest queue is one batch, 256 in
    the CPU recipe and 512 in cifar10_demo (MoCo v1's fig. 3 starts at its batch, 256)."""
    sizes = sorted({base.batch_size} | {k for k in (1024, 4096, 16384) if k % base.batch_size == 0})
    return {f"K={k}": {"K": k} for k in sizes}


def _more_negatives_help(knn: dict) -> bool:
    """K = 4096 or 16384 above the smallest queue run (a KeyError when a needed variant was not run)."""
    small = sorted((int(name[2:]), name) for name in knn if int(name[2:]) < 4096)
    if not small:
        raise KeyError("a queue smaller than 4096")
    return max(knn["K=4096"], knn["K=16384"]) > knn[small[0][1]]


def _best(knn: dict, names) -> float:
    """The highest kNN among `names` (a KeyError names a variant that was not run: 'cannot tell')."""
    if not names:
        raise KeyError("another m")
    return max(knn[n] for n in names)


ABLATIONS = {
    a.name: a
    for a in [
        Ablation(
            "momentum",
            {"m=0": {"m": 0.0}, "m=0.9": {"m": 0.9}, "m=0.99": {"m": 0.99}, "m=0.999": {"m": 0.999}},
            "a slowly moving key encoder is essential: m = 0 (the key encoder a copy of the query encoder) "
            "fails, a large m works best",
            "MoCo v1, sec. 4.1 (momentum ablation); the demo: 'momentum 0 fails'",
            "ImageNet linear: m = 0 fails to converge, 0.9: 55.2, 0.99: 57.8, 0.999: 59.0",
            lambda knn: knn["m=0"] < _best(knn, [n for n in knn if n != "m=0"]) - 1.0,
            "m = 0 more than 1 point below the best other m run",
        ),
        Ablation(
            "queue",
            _queue_sizes,
            "a larger dictionary of negatives is better, up to a saturation (near K = 4096 on CIFAR-10)",
            "MoCo v1, fig. 3 (accuracy against K); the demo: the queue saturates near 4096",
            "ImageNet linear rises with K, to 60.6 at K = 65536",
            _more_negatives_help,
            "K = 4096 or 16384 above the one-batch queue (K = 256 on the CPU recipe, 512 in cifar10_demo)",
        ),
        Ablation(
            "shuffle_bn",
            {"shuffle BN": {"shuffle_bn": True}, "no shuffle": {"shuffle_bn": False}},
            "without shuffling BN the model can cheat the pretext task through the batch statistics: "
            "its features are worse",
            "MoCo v1, sec. 3.3 and fig. A.1; the demo: no shuffle BN costs about 4 points at 800 epochs",
            "the demo: about -4 kNN points at 800 epochs",
            lambda knn: knn["shuffle BN"] > knn["no shuffle"],
            "shuffle BN above no shuffle",
        ),
        Ablation(
            "temperature",
            {"T=0.07": {"T": 0.07}, "T=0.1": {"T": 0.1}, "T=0.2": {"T": 0.2}, "T=0.5": {"T": 0.5}},
            "with a linear head a low temperature (0.07-0.1) is best; a high one (0.5) is worse",
            "MoCo v2, sec. 3 (the search over T with and without the MLP head)",
            "",
            lambda knn: _best(knn, ["T=0.07", "T=0.1"]) > knn["T=0.5"],
            "the better of T = 0.07, 0.1 above T = 0.5",
        ),
        Ablation(
            "head",
            {"linear head": {"head": "linear", "T": 0.2}, "MLP head": {"head": "mlp", "T": 0.2}},
            "an MLP projection head (2 layers) improves the backbone's features",
            "MoCo v2, table 1 (MLP, T = 0.2)",
            "ImageNet linear: 60.6 (MoCo v1) -> 66.2 with the MLP head",
            lambda knn: knn["MLP head"] > knn["linear head"],
            "MLP head above linear head (both T = 0.2)",
        ),
        Ablation(
            "augmentation",
            {"v1": {"augmentation": "v1"}, "aug+": {"augmentation": "aug_plus"}},
            "the stronger aug+ (colour jitter 0.8, blur) beats MoCo v1's augmentation",
            "MoCo v2, table 1 (aug+)",
            "ImageNet linear: 60.6 -> 63.4 with aug+",
            lambda knn: knn["aug+"] > knn["v1"],
            "aug+ above v1",
        ),
        Ablation(
            "symmetric",
            {"asymmetric": {"symmetric": False}, "symmetric": {"symmetric": True}},
            "the symmetric loss (both crops as query) gives better features for the same epochs",
            "the demo's results table",
            "CIFAR-10 kNN at 200 epochs: 82.6 asymmetric, 85.3 symmetric",
            lambda knn: knn["symmetric"] > knn["asymmetric"],
            "symmetric above asymmetric",
        ),
    ]
}


SEED = " seed="  # "m=0.9 seed=1": variant m=0.9 trained with seed 1


def seeded(variants: dict[str, dict], seeds: int, first_seed: int = 0) -> dict[str, dict]:
    """Each variant once per seed (first_seed, first_seed + 1, ...), named "<variant> seed=<s>"; with one
    seed the variants as they are."""
    if seeds <= 1:
        return variants
    return {
        f"{name}{SEED}{first_seed + i}": {**overrides, "seed": first_seed + i}
        for name, overrides in variants.items()
        for i in range(seeds)
    }


def sweep_for(name: str, folder, base: dict, variants: list[str] | None = None, seeds: int = 1) -> Sweep:
    """The Sweep of one ablation under folder/name (all its variants, or the named ones), each variant
    trained with `seeds` seeds from the base's seed on."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose from {list(ABLATIONS)}")
    chosen = ABLATIONS[name].variants
    if callable(chosen):
        recipe = {key: value for key, value in base.items() if key != "preset"}
        chosen = chosen(make_config(base.get("preset", "cifar10_demo"), **recipe))
    if variants:
        unknown = [v for v in variants if v not in chosen]
        if unknown:
            raise ValueError(f"ablation {name!r} has no variant {unknown}; it has {list(chosen)}")
        chosen = {v: chosen[v] for v in variants}
    return Sweep(Path(folder) / name, base, seeded(chosen, seeds, base.get("seed", 0)))


def seed_values(rows: list[dict]) -> dict[str, list]:
    """{variant: the final kNN top-1 of each of its seeds} (one value per variant for an unseeded sweep)."""
    values = {}
    for run, row in final(rows).items():
        values.setdefault(run.split(SEED)[0], []).append(row["knn_top1"])
    return values


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def verdict(name: str, rows: list[dict]) -> tuple[dict[str, float], str]:
    """({variant: mean final kNN top-1 over its seeds}, the verdict) of an ablation.

    The claim is judged once for every choice of one seed per variant: "holds" when it holds for all of
    them, "does not hold here" when for none, and "cannot tell at this scale" when the seeds disagree (the
    difference lies within the runs' own noise). With one seed per variant there is one choice and no noise
    measured (claims_table says so)."""
    last = final(rows)
    failed = [v for v, row in last.items() if row["state"] != "done"]
    if failed:
        return {}, f"cannot tell: {', '.join(failed)} did not finish"
    values = seed_values(rows)
    knn = {v: (spread(vs)[0] if None not in vs else None) for v, vs in values.items()}
    if any(value is None for value in knn.values()):
        return knn, "cannot tell: a run has no kNN (knn_every=0?)"
    try:
        outcomes = [
            bool(ABLATIONS[name].holds(dict(zip(values, pick)))) for pick in itertools.product(*values.values())
        ]
    except KeyError as missing:
        return knn, f"cannot tell: the claim compares {missing}, which was not run"
    if all(outcomes) or not any(outcomes):
        return knn, "holds" if outcomes[0] else "does not hold here"
    return knn, (
        f"cannot tell at this scale: it holds for {sum(outcomes)} of {len(outcomes)} choices of one seed per "
        f"variant, so the difference is within the runs' noise"
    )


def claims_table(results: dict[str, list[dict]]) -> str:
    """Markdown: per ablation its claim (with the source), the paper's number, what was measured, the verdict."""
    lines = [
        "| ablation | the claim (source) | the paper | here: final kNN top-1 (mean ± sd over seeds) | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        a = ABLATIONS[name]
        knn, says = verdict(name, rows)
        values = seed_values(rows)
        here = ", ".join(_shown(v, values[v]) for v, value in knn.items() if value is not None) or "-"
        several = max(map(len, values.values()), default=0) > 1
        rule = (
            f"{a.test}, for every choice of one seed per variant"
            if several
            else f"{a.test}; one seed each: noise not measured"
        )
        lines.append(f"| {name} | {a.claim} ({a.source}) | {a.paper or '-'} | {here} | **{says}** ({rule}) |")
    return "\n".join(lines)


def _shown(variant: str, values: list[float]) -> str:
    mean, sd = spread(values)
    return f"{variant} {mean:.1f}" + (f" ± {sd:.1f} ({len(values)} seeds)" if len(values) > 1 else "")


def read_ablations(folder, names: list[str] | None = None) -> dict[str, list[dict]]:
    """The rows of every ablation sweep found under folder (e.g. ones a job array ran)."""
    folder = Path(folder)
    names = names or [n for n in ABLATIONS if (folder / n / "sweep.json").exists()]
    return {name: collect(folder / name) for name in names}
