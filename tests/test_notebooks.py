"""Every notebook executes headless through papermill with tiny parameters on real data."""

import csv
import json
import re
import subprocess
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def committed_notebooks() -> dict[str, str]:
    """{path: text} of each notebook as git's index holds it (what a commit takes), so that a notebook run in
    JupyterLab in this clone, its outputs saved but not staged, does not fail the check; the working tree
    outside a git checkout (an unpacked sdist)."""
    repo = NOTEBOOKS.parent
    try:
        listed = subprocess.run(
            ["git", "ls-files", "notebooks/*.ipynb"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return {str(path): path.read_text() for path in sorted(NOTEBOOKS.glob("*.ipynb"))}
    return {
        name: subprocess.run(["git", "show", f":{name}"], cwd=repo, capture_output=True, text=True, check=True).stdout
        for name in listed
    }


def test_notebooks_are_committed_clean_with_a_parameters_cell():
    committed = committed_notebooks()
    assert len(committed) >= 6, committed.keys()
    for path, text in committed.items():
        nb = nbformat.reads(text, as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path} has outputs"
        assert all("id" in c for c in nb.cells), f"{path}: a cell without an id (nbformat 4.5 needs one)"


def run_02_pretrain(cifar10_root, tmp_path, **extra):
    """Execute 02_pretrain with a tiny real-data run; returns (output dir, executed notebook's code outputs)."""
    out_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOKS / "02_pretrain.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters=dict(
            dataset="imagefolder",
            data_root=str(cifar10_root),
            epochs=1,
            batch_size=16,
            K=64,
            lr=0.01,
            gpus=0,
            workers=0,
            train_subset=32,
            knn_bank_size=64,
            knn_test_size=32,
            output_dir=str(out_dir),
            **extra,
        ),
    )
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    return out_dir, [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.slow
def test_02_pretrain_runs_headless(cifar10_root, tmp_path):
    out_dir, outputs = run_02_pretrain(cifar10_root, tmp_path)
    written = (out_dir / "lr_schedule.png").stat().st_mtime_ns
    with pytest.raises(papermill.PapermillExecutionError, match="already holds a pretraining run"):
        run_02_pretrain(cifar10_root, tmp_path)  # run again into the same folder: refused before any write
    assert (out_dir / "lr_schedule.png").stat().st_mtime_ns == written
    rows = list(csv.DictReader(open(out_dir / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[0]["knn_top1"] != "" and rows[1]["knn_top1"] != ""
    for name in ("lr_schedule", "loss", "instance_accuracy", "similarities", "queue_age", "knn", "curves"):
        assert (out_dir / f"{name}.png").stat().st_size > 10_000, name
    assert json.loads((out_dir / "config.json").read_text())["config"]["K"] == 64
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 8  # the lr schedule, five diagnostics, the page of all of them, beside the full run
    assert (out_dir / "beside_full_run.png").stat().st_size > 10_000
    steps = list(csv.DictReader(open(out_dir / "steps.csv")))
    # 32 images in batches of 16: after 2 steps, 32 of the 64 slots hold keys, the oldest 1 step old.
    assert float(steps[-1]["key_age_max"]) == 1 and float(steps[-1]["random_keys"]) == 0.5
    # The look-inside cells: InfoNCE by hand equals info_nce, the momentum update decays as m^n, the queue wraps.
    text = "".join(o.get("text", "") for o in outputs)
    by_hand, ours = re.search(r"loss by hand (\S+), info_nce (\S+)", text).groups()
    assert by_hand == ours
    assert re.search(r"after 100 steps theta_k = (\S+) \(m\^100 = \1\)", text)
    assert "after step 3: pointer 0" in text and "share still random 0.00" in text


@pytest.mark.slow
def test_02_pretrain_runs_headless_with_two_cpu_processes(cifar10_root, tmp_path):
    out_dir, outputs = run_02_pretrain(cifar10_root, tmp_path, processes=2)
    assert json.loads((out_dir / "config.json").read_text())["processes"] == 2
    text = "".join(o.get("text", "") for o in outputs)
    assert "starting 2 processes (gloo on the CPU)" in text and "epoch 1/1" in text  # relayed live
    assert (out_dir / "curves.png").exists()


@pytest.mark.slow
def test_01_augmentations_runs_headless_and_shows_the_explorer_as_a_png(cifar10_root, tmp_path):
    papermill.execute_notebook(
        str(NOTEBOOKS / "01_augmentations.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters=dict(
            dataset="imagefolder",
            data_root=str(cifar10_root),
            image_size=64,
            n_images=4,
            output_dir=str(tmp_path / "figs"),
        ),
    )
    for name in ("images", "operations", "views", "positive_pairs", "v1_vs_v2", "cifar_vs_imagenet"):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 10_000, name
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    explorer = executed.cells[-2].outputs[0]["data"]  # the widget, with its static figure
    assert "application/vnd.jupyter.widget-view+json" in explorer and len(explorer["image/png"]) > 10_000


@pytest.mark.slow
def test_04_embeddings_runs_headless_on_the_teaching_checkpoint(cifar10_root, tmp_path):
    """No runs/demo checkpoint in the project folder: 04 shows the shipped teaching checkpoint, and says so."""
    papermill.execute_notebook(
        str(NOTEBOOKS / "04_embeddings.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters=dict(
            dataset="imagefolder",
            data_root=str(cifar10_root),
            n_points=120,
            layers="feat2,feat5",
            n_queries=2,
            top_k=4,
            n_pairs=40,
            output_dir=str(tmp_path / "figs"),
        ),
    )
    for name in (
        "maps",
        "layers",
        "thumbnails",
        "retrieval_MoCo",
        "retrieval_random_init",
        "similarities",
        "alignment_uniformity",
    ):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 10_000, name
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "| random init | head |" in text
    assert f"{tmp_path}/runs/demo/checkpoint_last.pt does not exist yet" in text and "showing teaching_cifar10" in text
    # the model has learnt: its neighbours share the query's class far more often than a random network's
    moco, random = (float(re.search(rf"{name}: precision@4 over all 120 images: ([\d.]+)%", text).group(1))
                    for name in ("MoCo", "random init"))  # fmt: skip
    assert moco > random + 10, (moco, random)


@pytest.mark.slow
def test_06_ablations_runs_two_ablations_and_judges_their_claims(cifar10_root, tmp_path):
    """Two ablations, two variants each, one tiny epoch on real CIFAR-10 images: curves, verdicts, claims."""
    out = tmp_path / "ablations"
    papermill.execute_notebook(
        str(NOTEBOOKS / "06_ablations.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters=dict(
            ablations_to_run="momentum,shuffle_bn",
            variants={"momentum": ["m=0", "m=0.99"]},
            preset="cifar10_cpu",
            epochs=1,
            train_subset=128,
            dataset="imagefolder",
            data_root=str(cifar10_root),
            knn_bank_size=128,
            knn_test_size=64,
            extra={"batch_size": 64, "K": 128, "knn_k": 20},
            seeds=2,
            output_dir=str(out),
        ),
    )
    for name in ("momentum", "shuffle_bn", "verdicts"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    runs = ["m=0 seed=0", "m=0 seed=1", "m=0.99 seed=0", "m=0.99 seed=1"]
    assert sorted(p.name for p in (out / "momentum").iterdir() if p.is_dir()) == runs
    rows = list(csv.DictReader(open(out / "shuffle_bn" / "results.csv")))
    assert {r["variant"] for r in rows} == {f"{v} seed={s}" for v in ("shuffle BN", "no shuffle") for s in (0, 1)}
    assert {r["state"] for r in rows} == {"done"}
    claims = (out / "claims.md").read_text()
    assert claims.count("\n| ") == 2 and "| momentum |" in claims and "| shuffle_bn |" in claims
    # both ran: a verdict each, with each variant's mean and spread over its two seeds
    verdicts = re.findall(r"\*\*(holds|does not hold here|cannot tell at this scale: [^*]+)\*\*", claims)
    assert len(verdicts) == 2 and claims.count("(2 seeds)") == 4
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = "".join(str(o.get("text", "")) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    # "shuffle BN" has the settings of m=0.99: trained once, its folder a link to that run
    assert "2 ablations, 4 variants x 2 seed(s), 6 runs to train, executor 'inline'" in text
    for seed in (0, 1):
        shuffled, base = out / "shuffle_bn" / f"shuffle BN seed={seed}", out / "momentum" / f"m=0.99 seed={seed}"
        assert shuffled.resolve() == base.resolve()


@pytest.fixture(scope="module")
def mmselfsup_file(tmp_path_factory):
    """A file in MMSelfSup 0.x's exact layout (the reference page's checkpoint format), of a seeded ResNet-50."""
    from layouts import mlp_v2, resnet50, write_mmselfsup_0x

    return write_mmselfsup_0x(
        tmp_path_factory.mktemp("published") / "mocov2_mmselfsup.pth", resnet50(0), resnet50(1), mlp_v2()
    )


@pytest.mark.slow
def test_03_evaluate_puts_the_published_numbers_beside_the_measurement(mmselfsup_file, cifar10_root, tmp_path):
    """A foreign file compared with the numbers published for mmselfsup_mocov2_200ep: every table has the
    published column and the difference, and says that CIFAR-10 subsets at 32 px are not the published setting."""
    papermill.execute_notebook(
        str(NOTEBOOKS / "03_evaluate.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters=dict(
            checkpoint=str(mmselfsup_file),
            published="mmselfsup_mocov2_200ep",
            baseline="",
            dataset="imagefolder",
            data_root=str(cifar10_root),
            image_size=32,
            train_size=200,
            test_size=100,
            lowshot_ks="1,2",
            lowshot_samples=2,
            probe_epochs=1,
            probe_lr=0.01,
            workers=0,
            output_dir=str(tmp_path / "eval"),
        ),
    )
    results = json.loads((tmp_path / "eval" / "moco" / "results.json").read_text())
    assert results["published"]["name"] == "mmselfsup_mocov2_200ep" and results["published"]["this_file"] is False
    assert results["checkpoint_summary"].startswith(
        "resnet50 with its projection head, from a file in the openmmlab format that is no published one mocolab knows"
    )
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    shown = "".join(
        str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", ""))
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "| layer | mAP | published (mmselfsup_mocov2_200ep) | difference |" in shown
    feat5 = results["svm"]["layers"]["feat5"]["mAP"]
    assert f"| feat5 | {feat5:.2f} | 84.04 | {feat5 - 84.04:+.2f} |" in shown
    assert "| published (mmselfsup_mocov2_200ep) | 43.14 | 53.29 |" in shown  # low-shot k = 1, 2
    top1 = results["linear"]["protocols"]["avgpool"]["top1"]["avgpool"]
    assert f"| avgpool: avgpool | {top1:.2f} | 67.58 | {top1 - 67.58:+.2f} |" in shown
    assert "| published (mmselfsup_mocov2_200ep) | 55.60 | 55.70 |" in shown  # kNN k = 10, 20
    caption = "; not the setting of mmselfsup_mocov2_200ep's numbers: pretrained on ImageNet-1k train"
    assert shown.count(caption) == 4 and "200 training, 100 test images, seeded subsets), 32 px" in shown


@pytest.mark.slow
def test_04_embeddings_shows_published_models_side_by_side(mmselfsup_file, cifar10_root, tmp_path):
    """The MMSelfSup-layout file beside a backbone-only torchvision-layout file: every map, retrieval and pair
    statistic for both, the backbone-only one measured on its pooled features."""
    import torch

    backbone_only = tmp_path / "backbone_only.pth"
    from layouts import resnet50

    torch.save({k: v for k, v in resnet50(2).state_dict().items() if not k.startswith("fc.")}, backbone_only)
    papermill.execute_notebook(
        str(NOTEBOOKS / "04_embeddings.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters=dict(
            checkpoint=str(mmselfsup_file),
            compare=str(backbone_only),
            dataset="imagefolder",
            data_root=str(cifar10_root),
            image_size=32,
            n_points=100,
            methods="umap",
            layers="feat5",
            n_queries=2,
            top_k=4,
            n_pairs=30,
            output_dir=str(tmp_path / "figs"),
        ),
    )
    for name in (
        "maps",
        "layers",
        "thumbnails",
        "retrieval_mocov2_mmselfsup.pth",
        "retrieval_backbone_only.pth",
        "retrieval_random_init",
        "similarities",
        "alignment_uniformity",
    ):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 10_000, name
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "through: random init, mocov2_mmselfsup.pth, backbone_only.pth" in text
    assert "| mocov2_mmselfsup.pth | head |" in text and "| backbone_only.pth | avgpool |" in text
    assert "backbone only (no projection head), from a file in the torchvision format" in text
