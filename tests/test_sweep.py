"""Sweeps: variants validated before any run, finished runs skipped, interrupted ones resumed, failures recorded,
N processes at a time, commands that reproduce a run, tidy results; the ablations' verdicts."""

import csv
import json
import subprocess

import pytest

import mocolab.sweep
from mocolab import ConfigError, make_config, pretrain
from mocolab.ablations import ABLATIONS, claims_table, sweep_for, verdict
from mocolab.sweep import Sweep, collect, run_sweeps


def base(root, **kw):
    return {
        "preset": "cifar10_cpu",
        "dataset": "imagefolder",
        "data_root": str(root),
        "train_subset": 128,
        "batch_size": 64,
        "K": 128,
        "epochs": 1,
        "knn_bank_size": 128,
        "knn_test_size": 64,
        "knn_k": 20,
        **kw,
    }


def test_bad_variants_fail_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(mocolab.sweep.Sweep, "_run_here", lambda *a: pytest.fail("a run started"))
    with pytest.raises(ConfigError, match=r"variant 'fast': unknown config key 'lrr'; did you mean 'lr'\?"):
        Sweep(tmp_path, {"epochs": 1}, {"ok": {"lr": 0.1}, "fast": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"variant 'cold': .*T"):
        Sweep(tmp_path, {}, {"cold": {"T": -1.0}})
    with pytest.raises(ConfigError, match=r"variant names must differ; \['a'\]"):
        Sweep(tmp_path, {}, [("a", {"m": 0.9}), ("a", {"m": 0.99})])
    with pytest.raises(ConfigError, match=r"parallel=2 runs on one GPU each, but this machine has 0 GPU\(s\)"):
        Sweep(tmp_path, {}, {"a": {}}).run(parallel=2, gpus=True)
    with pytest.raises(ValueError, match=r"ablation 'momentum' has no variant \['m=0.5'\]"):
        sweep_for("momentum", tmp_path, {}, ["m=0.5"])
    with pytest.raises(FileNotFoundError, match=r"holds no sweep.json, so it is not a sweep's folder"):
        collect(tmp_path / "elsewhere")


@pytest.mark.slow
def test_a_failing_variant_is_recorded_the_others_run_and_a_rerun_skips_what_is_done(
    cifar10_root, tmp_path, monkeypatch
):
    sweep = Sweep(
        tmp_path / "sweep",
        base(cifar10_root),
        {"m=0.9": {"m": 0.9}, "broken": {"data_root": str(tmp_path / "nowhere")}, "m=0.99": {"m": 0.99}},
    )
    with pytest.warns(
        UserWarning,
        match=r"variant 'broken' failed \(DatasetError: data_root .*nowhere does not "
        r"exist",
    ):
        rows = sweep.run(progress=False)
    states = {row["variant"]: row["state"] for row in rows}
    assert states == {"m=0.9": "done", "broken": "failed", "m=0.99": "done"}
    assert "DatasetError" in next(r["error"] for r in rows if r["variant"] == "broken")
    done = [r for r in rows if r["variant"] == "m=0.9"]
    assert [r["epoch"] for r in done] == [0, 1] and done[1]["knn_top1"] is not None and done[1]["setting"] == "m=0.9"
    table = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert len(table) == len(rows) and set(table[0]) == set(mocolab.sweep.COLUMNS)

    calls = []
    monkeypatch.setattr(mocolab.sweep.Sweep, "_run_here", lambda self, name, progress: calls.append(name))
    sweep.run(progress=False)
    assert calls == ["broken"]  # the finished runs are skipped; the failed one is tried again
    assert collect(tmp_path / "sweep") == rows  # read back from the folders alone


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint(cifar10_root, tmp_path):
    sweep = Sweep(tmp_path / "sweep", base(cifar10_root, epochs=2), {"a": {}})
    pretrain(make_config("cifar10_cpu", **{**sweep.overrides("a"), "stop_after": 1}), progress=False)  # "killed"
    assert sweep.state("a") == "started"
    with pytest.warns(UserWarning, match="resuming .* with changed settings"):  # stop_after, as the kill left it
        rows = sweep.run(progress=False)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and sweep.state("a") == "done"
    log = (tmp_path / "sweep" / "a" / "log.txt").read_text()
    assert log.count("epoch 1/2") == 1 and "epoch 2/2" in log  # epoch 1 was not trained again


@pytest.mark.slow
def test_runs_in_parallel_processes_and_a_printed_command_reproduces_a_run(cifar10_root, tmp_path):
    sweep = Sweep(tmp_path / "parallel", base(cifar10_root), {"m=0.9": {"m": 0.9}, "mlp": {"head": "mlp"}})
    rows = sweep.run(parallel=2, progress=False)
    assert {r["variant"]: r["state"] for r in rows} == {"m=0.9": "done", "mlp": "done"}
    saved = json.loads((tmp_path / "parallel" / "mlp" / "config.json").read_text())["config"]
    assert saved["head"] == "mlp" and saved["output_dir"] == str(tmp_path / "parallel" / "mlp")

    inline = Sweep(tmp_path / "inline", base(cifar10_root), {"m=0.9": {"m": 0.9}})
    inline.run(progress=False)
    again = Sweep(tmp_path / "command", base(cifar10_root), {"m=0.9": {"m": 0.9}})
    command = again.commands()[0]
    assert "--preset cifar10_cpu" in command and "m=0.9" in command
    subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=600)
    here, there = collect(tmp_path / "inline"), collect(tmp_path / "command")
    assert [r["state"] for r in there] == ["done", "done"]
    assert [r["loss"] for r in there] == pytest.approx([r["loss"] for r in here], abs=1e-4)
    assert [r["knn_top1"] for r in there] == pytest.approx([r["knn_top1"] for r in here], abs=1.0)
    subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=600)  # again: it resumes
    assert collect(tmp_path / "command")[-1]["epoch"] == 1


@pytest.mark.slow
def test_sweeps_train_a_shared_setting_once_and_refuse_a_folder_of_other_settings(cifar10_root, tmp_path, monkeypatch):
    first = Sweep(tmp_path / "first", base(cifar10_root), {"base": {}, "m=0.9": {"m": 0.9}})
    second = Sweep(tmp_path / "second", base(cifar10_root), {"T=0.1": {"T": 0.1}, "T=0.2": {"T": 0.2}})
    assert first.configs["base"].T == 0.1  # so "T=0.1" is the first sweep's "base" run
    trained = []
    real = Sweep._run_here
    monkeypatch.setattr(
        Sweep,
        "_run_here",
        lambda self, name, progress: (trained.append(f"{self.folder.name}/{name}"), real(self, name, progress)),
    )
    results = run_sweeps({"first": first, "second": second}, progress=False)
    assert trained == ["first/base", "first/m=0.9", "second/T=0.2"]
    link = tmp_path / "second" / "T=0.1"
    assert link.is_symlink() and link.resolve() == (tmp_path / "first" / "base").resolve()
    assert not (tmp_path / "second" / "T=0.1").readlink().is_absolute()  # the sweeps' folder can move
    shared = [
        {k: v for k, v in r.items() if k not in ("variant", "setting")}
        for r in results["second"]
        if r["variant"] == "T=0.1"
    ]
    assert (
        shared
        == [
            {k: v for k, v in r.items() if k not in ("variant", "setting")}
            for r in results["first"]
            if r["variant"] == "base"
        ]
        and shared[-1]["state"] == "done"
    )
    assert [c for c in second.commands() if "T=0.1" in c] == []  # a job array trains it once too
    assert run_sweeps({"first": first, "second": second}, progress=False) == results and len(trained) == 3

    # The base changed (T=0.2 for every run) but the folders hold T=0.1 runs: refused before anything runs.
    monkeypatch.setattr(Sweep, "_run_here", lambda *a: pytest.fail("a run started"))
    changed = Sweep(tmp_path / "first", base(cifar10_root, T=0.2), {"base": {}, "m=0.9": {"m": 0.9}})
    with pytest.raises(
        ConfigError,
        match=r"first/base holds a run of other settings than variant 'base' \(T: 0.1 "
        r"there, 0.2 now\)\. Delete that folder",
    ):
        changed.run(progress=False)
    with pytest.raises(ConfigError, match="holds a run of other settings"):
        run_sweeps(
            {"other": Sweep(tmp_path / "other", base(cifar10_root, T=0.2), {"new": {"m": 0.5}}), "first": changed},
            progress=False,
        )
    assert not (tmp_path / "other" / "new").exists()


@pytest.mark.slow
def test_parallel_sweeps_share_one_pool_of_processes(cifar10_root, tmp_path, capsys):
    """Two sweeps of one variant each with parallel=2: both runs start at once (a pool per sweep would run them
    one after the other, and 8 GPUs would idle on sweeps of 2-4 variants)."""
    sweeps = {
        "a": Sweep(tmp_path / "a", base(cifar10_root), {"m=0.9": {"m": 0.9}}),
        "b": Sweep(tmp_path / "b", base(cifar10_root), {"mlp": {"head": "mlp"}}),
    }
    results = run_sweeps(sweeps, parallel=2)
    assert {name: [(r["variant"], r["state"], r["epoch"]) for r in rows] for name, rows in results.items()} == {
        "a": [("m=0.9", "done", 0), ("m=0.9", "done", 1)],
        "b": [("mlp", "done", 0), ("mlp", "done", 1)],
    }
    lines = capsys.readouterr().out.splitlines()
    events = [line.split(" in ")[0] for line in lines if line.startswith(("a/", "b/"))]
    assert events[:2] == ["a/m=0.9: started", "b/mlp: started"] and sorted(events[2:]) == [
        "a/m=0.9: done",
        "b/mlp: done",
    ]


def test_the_smallest_queue_is_one_batch_since_k_must_be_a_multiple_of_it(tmp_path):
    assert list(sweep_for("queue", tmp_path, {"preset": "cifar10_cpu"}).configs) == [
        "K=256",
        "K=1024",
        "K=4096",
        "K=16384",
    ]
    demo = sweep_for("queue", tmp_path, {"preset": "cifar10_demo"})  # batch 512: K=256 would be refused
    assert [(name, cfg.K, cfg.batch_size) for name, cfg in demo.configs.items()] == [
        ("K=512", 512, 512),
        ("K=1024", 1024, 512),
        ("K=4096", 4096, 512),
        ("K=16384", 16384, 512),
    ]
    assert list(sweep_for("queue", tmp_path, {"preset": "cifar10_demo", "batch_size": 2048}).configs) == [
        "K=2048",
        "K=4096",
        "K=16384",
    ]

    def rows(knn):
        return [{"variant": v, "state": "done", "epoch": 3, "knn_top1": value} for v, value in knn.items()]

    assert verdict("queue", rows({"K=512": 30.0, "K=1024": 31.0, "K=4096": 33.0, "K=16384": 32.0}))[1] == "holds"
    assert verdict("queue", rows({"K=256": 35.0, "K=4096": 32.0, "K=16384": 31.0}))[1] == "does not hold here"
    assert verdict("queue", rows({"K=4096": 32.0, "K=16384": 31.0}))[1].startswith("cannot tell")


def test_verdicts_read_the_claims_direction_and_say_when_they_cannot():
    def rows(knn, state="done"):
        return [{"variant": v, "state": state, "epoch": 3, "knn_top1": value} for v, value in knn.items()]

    assert verdict("momentum", rows({"m=0": 20.0, "m=0.9": 30.0, "m=0.99": 35.0, "m=0.999": 33.0}))[1] == "holds"
    assert verdict("shuffle_bn", rows({"shuffle BN": 30.0, "no shuffle": 31.0}))[1] == "does not hold here"
    assert (
        verdict("shuffle_bn", rows({"shuffle BN": 30.0}))[1] == "cannot tell: the claim compares 'no shuffle', "
        "which was not run"
    )
    assert verdict("head", rows({"linear head": 1.0, "MLP head": None}, "failed"))[1].startswith("cannot tell")
    table = claims_table({"momentum": rows({"m=0": 20.0, "m=0.9": 30.0, "m=0.99": 35.0, "m=0.999": 33.0})})
    assert "| momentum |" in table and "59.0" in table and "m=0 20.0" in table and "**holds**" in table
    assert set(ABLATIONS) == {"momentum", "queue", "shuffle_bn", "temperature", "head", "augmentation", "symmetric"}


def test_with_several_seeds_a_difference_within_their_noise_cannot_be_told(tmp_path):
    """The verdict is judged for every choice of one seed per variant: all agree, or 'cannot tell'."""

    def rows(knn):
        return [
            {"variant": f"{v} seed={s}", "state": "done", "epoch": 3, "knn_top1": x}
            for v, values in knn.items()
            for s, x in enumerate(values)
        ]

    clear = rows({"shuffle BN": [33.0, 33.4], "no shuffle": [31.0, 30.6]})
    assert verdict("shuffle_bn", clear) == ({"shuffle BN": 33.2, "no shuffle": 30.8}, "holds")
    noisy = rows({"shuffle BN": [32.0, 33.4], "no shuffle": [32.1, 31.6]})  # 32.7 against 31.85, but seeds overlap
    knn, says = verdict("shuffle_bn", noisy)
    assert knn["shuffle BN"] > knn["no shuffle"]  # the means alone would say "holds"
    assert says.startswith("cannot tell at this scale: it holds for 3 of 4 choices of one seed per variant")
    table = claims_table({"shuffle_bn": noisy})
    assert "shuffle BN 32.7 ± 1.0 (2 seeds)" in table and "for every choice of one seed per variant" in table
    worse = rows({"shuffle BN": [30.0, 30.2], "no shuffle": [31.0, 31.5]})
    assert verdict("shuffle_bn", worse)[1] == "does not hold here"
    runs = list(sweep_for("shuffle_bn", tmp_path, {"seed": 5}, seeds=2).configs)
    assert runs == ["shuffle BN seed=5", "shuffle BN seed=6", "no shuffle seed=5", "no shuffle seed=6"]


def test_the_lab_plans_every_sweep_before_any_run_and_refuses_bad_parameters(cifar10_root, tmp_path):
    """Notebook 06's parameters as a LabConfig: a wrong name fails there; the plan counts the shared run once,
    and the commands executor writes one command per run without training."""
    from mocolab.ablation_lab import AblationLab, LabConfig

    lab = AblationLab(
        LabConfig(
            ablations_to_run="momentum,shuffle_bn",
            variants={"momentum": ["m=0", "m=0.99"]},
            preset="cifar10_cpu",
            epochs=1,
            train_subset=128,
            dataset="imagefolder",
            data_root=str(cifar10_root),
            executor="commands",
            output_dir=str(tmp_path / "lab"),
        )
    )
    assert lab.seeds == 2  # the CPU recipe's default
    assert lab.summary().endswith("2 ablations, 4 variants x 2 seed(s), 6 runs to train, executor 'commands'")
    assert lab.base["train_subset"] == 128 and lab.base["knn_feature"] == "avgpool" and lab.parallel == 1
    assert list(lab.run()) == ["momentum", "shuffle_bn"]
    commands = (tmp_path / "lab" / "commands.sh").read_text().splitlines()
    assert len(commands) == 6 and not list((tmp_path / "lab").rglob("checkpoint_last.pt"))  # nothing trained
    for bad, message in (
        (dict(ablations_to_run="momentum,nope"), "ablations_to_run\\[1\\]='nope' is not one of"),
        (dict(ablations_to_run="momentum", variants={"queue": ["K=256"]}), "not in ablations_to_run"),
        (dict(executor="slurm"), "executor='slurm'"),
        (dict(seeds=0), "seeds must be 1 or more"),
    ):
        with pytest.raises(ConfigError, match=message):
            LabConfig(**bad)
