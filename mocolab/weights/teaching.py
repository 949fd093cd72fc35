"""The teaching checkpoint: a CIFAR-10 encoder trained by mocolab and shipped inside the package.

A class without a GPU cannot train a useful encoder during the lesson, so
mocolab carries one (weights.registry entry `teaching_cifar10`): the
`cifar10_cpu` recipe (docs/protocols.md section 4) trained on the 50,000
CIFAR-10 training images for as many epochs as about two hours of a 2-core
CPU allow. Notebooks 03-05 default to it when runs/demo holds no checkpoint
(ui.notebook.find_checkpoint), and notebook 02 draws its `metrics.csv`
beside the live run: what a full run looks like.

`compact` makes such a file from any run: the query encoder alone (backbone
and projection head; no key encoder, queue, optimiser or RNG state, so it
cannot be resumed), in fp16 when asked, with the run's config and per-epoch
history. `benchmarks/teaching_checkpoint.py` measures kNN of the fp16 file
against fp32 before it is shipped (fp16 only if within 0.1 point).

    python -m mocolab.weights compact runs/x/checkpoint_last.pt out.pt [--fp32]
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..run import checkpoint as ckpt

NAME = "teaching_cifar10"
FOLDER = Path(__file__).parent / "teaching"
FILE = FOLDER / "cifar10_resnet10_w16.pt"
METRICS = FOLDER / "metrics.csv"


def compact(
    checkpoint: str | Path,
    out: str | Path,
    half: bool = True,
    dataset: str | None = None,
    data_root: str | None = None,
    trained_on: str | None = None,
) -> Path:
    """Write the query encoder of pretraining checkpoint `checkpoint` to `out` (kind "encoder").

    half: store floating tensors in fp16 (they load back into fp32 modules).
    dataset, data_root: what the file's config names as its data, the default evaluation data of
    notebooks 03/04 (a file shipped to others should name data they can get: "cifar10", "data"); the
    data it really saw is kept in words in `trained_on`.
    """
    state = ckpt.load_pretraining(checkpoint)
    config = dict(state["config"])
    trained_on = trained_on or f"{config['dataset']} at {config['data_root']}"
    config.update({k: v for k, v in (("dataset", dataset), ("data_root", data_root)) if v is not None})
    config["resume"] = False  # the export is no run to continue
    encoder = {
        k: (v.half() if half and v.is_floating_point() else v).clone()
        for k, v in state["model"].items()
        if k.startswith("encoder_q.")
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_save(
        {
            "kind": "encoder",
            "model": encoder,
            "epoch": state["epoch"],
            "config": config,
            "history": state["history"],
            "trained_on": trained_on,
            "precision": "fp16" if half else "fp32",
        },
        out,
    )
    return out


def history(path: str | Path = METRICS) -> list[dict]:
    """The per-epoch rows of a metrics.csv (the teaching run's by default), numbers as floats, blanks as None."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]
