"""One writer per folder, writes that fail cleanly on a full disk, temporaries that never collide."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from mocolab import make_config, pretrain
from mocolab.run import lock
from mocolab.run.checkpoint import DiskFullError, atomic_save, load_checkpoint
from mocolab.settings import ConfigError


def tiny(cifar10_root, folder, **kw):
    return make_config("tiny", dataset="imagefolder", gpus=0, data_root=str(cifar10_root), output_dir=str(folder), **kw)


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_holders_lock_is_taken_over(cifar10_root, tmp_path):
    folder = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "mocolab", "--preset", "tiny", "dataset=imagefolder", "gpus=0", "epochs=50"]
        + [f"data_root={cifar10_root}", f"output_dir={folder}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (folder / "checkpoint_last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.holder(folder)["pid"] == first.pid
    with pytest.raises(ConfigError, match=f"is in use: a run started .* by process {first.pid} on "):
        pretrain(tiny(cifar10_root, folder, epochs=50, resume=True), progress=False)
    assert first.poll() is None  # the refused run changed nothing of the first one's

    first.send_signal(signal.SIGKILL)  # no time to remove its lock
    first.wait()
    assert (folder / lock.NAME).exists() and lock.holder(folder) is None  # stale: its process is gone
    with pytest.warns(UserWarning, match=f"took over .*run.lock from process {first.pid}.*no longer runs"):
        run = pretrain(tiny(cifar10_root, folder, epochs=2, resume=True, stop_after=0), progress=False)
    assert run.history[-1]["epoch"] >= 1 and not (folder / lock.NAME).exists()  # released at the end


def test_the_lock_names_another_hosts_holder_and_a_refused_job_leaves_no_folder(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / lock.NAME).write_text('{"pid": 1, "host": "node-17", "started": "2026-12-01 09:00:00"}')
    with pytest.raises(ConfigError, match="process 1 on node-17.*if that process no longer runs on node-17, delete"):
        with lock.held(folder):
            pass
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="failed inside"):
        with lock.held(fresh):
            assert lock.holder(fresh)["pid"] == os.getpid()
            raise RuntimeError("failed inside")
    assert not fresh.exists()


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    path, errors = tmp_path / "checkpoint_last.pt", []

    def write(n):
        try:
            for i in range(20):
                atomic_save({"writer": n, "i": i, "x": torch.full((1000,), float(n))}, path)
        except Exception as err:  # with one shared temporary name: FileNotFoundError on the rename
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and load_checkpoint(path)["i"] == 19
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (mount needs root: skipped, saying so, where it is refused)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_checkpoint_on_a_full_disk_says_so_removes_its_partial_file_and_keeps_the_last_good_one(small_disk):
    path = small_disk / "checkpoint_last.pt"
    atomic_save({"epoch": 1, "w": torch.zeros(2**18)}, path)  # 1 MB
    with pytest.raises(DiskFullError, match=r"no space left on .*disk \(.* MB free\) to write checkpoint_last.pt.*"):
        atomic_save({"epoch": 2, "w": torch.zeros(2**20)}, path)  # 4 MB: does not fit beside the first
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint_last.pt"]  # no partial .tmp
    assert load_checkpoint(path)["epoch"] == 1
    with pytest.raises(DiskFullError, match="untouched and still holds the last good version"):
        atomic_save({"epoch": 2, "w": torch.zeros(2**20)}, path)


# ----------------------------------------------------------------------------
# Caches that check themselves
# ----------------------------------------------------------------------------


def damage(path, how):
    """A cache file as a full disk (cut in half) or a bad sector (one byte of the stored data changed) leaves it."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # a byte in the middle of the largest record, the stored tensor's bytes, not the zip's directory
        data[len(data) // 2] ^= 0x5A
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_feature_cache_is_rebuilt_with_a_warning_never_used(cifar10_root, tmp_path, how):
    from mocolab import augment
    from mocolab.data.datasets import load_split, seeded_subset
    from mocolab.evaluate.baselines import baseline_encoder
    from mocolab.evaluate.feature_cache import cached_features

    encoder, identity = baseline_encoder("random", "resnet18", cifar_stem=True)
    transform = augment.eval_transform(32, *augment.normalisation("cifar"))
    ds = seeded_subset(load_split("imagefolder", cifar10_root, "test", transform), 40, 0)
    args = (encoder, identity, ds, "cifar10:test", ("avgpool",), tmp_path)
    first, _ = cached_features(*args, workers=0, progress=False)
    (cache,) = tmp_path.glob("*.pt")
    damage(cache, how)
    with pytest.warns(UserWarning, match="cache file .* (cannot be read|does not match its checksum).*building it"):
        again, _ = cached_features(*args, workers=0, progress=False)
    assert torch.equal(again["avgpool"], first["avgpool"])
    again, _ = cached_features(*args, workers=0, progress=False)  # rebuilt: read back without a word
    assert torch.equal(again["avgpool"], first["avgpool"])


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_image_cache_is_decoded_again(tmp_path, how):
    from conftest import write_image_folder
    from mocolab.data.device import cached_split

    root = write_image_folder(tmp_path / "data", per_class=40, size=16)
    images, labels = cached_split("imagefolder", root, "train", cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.pt")
    damage(cache, how)
    with pytest.warns(UserWarning, match="building it again"):
        again, again_labels = cached_split("imagefolder", root, "train", cache_dir=tmp_path / "cache")
    assert torch.equal(again, images) and torch.equal(again_labels, labels)


def test_a_cache_that_a_full_disk_cannot_hold_is_skipped_and_the_work_goes_on(small_disk):
    from mocolab.run import cache_file

    with pytest.warns(UserWarning, match="not cached: no space left on"):
        cache_file.save(small_disk / "features.pt", {"k": 1}, {"features": torch.zeros(2**21)})  # 8 MB
    assert list(small_disk.iterdir()) == []


# ----------------------------------------------------------------------------
# Weights that are not numbers, and the identity of what was loaded
# ----------------------------------------------------------------------------


def test_nan_weights_are_refused_at_every_entry_point_with_the_tensor_named(tiny_checkpoint, cifar10_root, tmp_path):
    from mocolab import load_run, weights
    from mocolab.evaluate.suite import evaluate
    from mocolab.transfer import export
    from mocolab.transfer.models import backbone_weights

    state = load_checkpoint(tiny_checkpoint)
    state["model"]["encoder_q.backbone.conv1.weight"][0, 0, 0, 0] = float("nan")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    atomic_save(state, run_dir / "checkpoint_last.pt")
    bad = run_dir / "checkpoint_last.pt"
    cfg = make_config(**{**state["config"], "epochs": 2, "resume": True, "output_dir": str(run_dir)})
    entry_points = {
        "weights.load": lambda: weights.load(bad),
        "evaluate": lambda: evaluate(
            checkpoint=str(bad), dataset="imagefolder", data_root=str(cifar10_root), output_dir=str(tmp_path / "e")
        ),
        "export": lambda: export(bad, tmp_path / "out.pth"),
        "fine-tuning from it": lambda: backbone_weights(str(bad)),
        "resume": lambda: pretrain(cfg, progress=False),
        "load_run": lambda: load_run(run_dir),
    }
    for name, call in entry_points.items():
        with pytest.raises(Exception, match=r"not finite numbers.*first bad tensor .*conv1.weight: 1 NaN and 0 inf"):
            call()
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "e").exists()


def test_the_identity_of_a_loaded_checkpoint_is_the_hash_of_the_bytes_it_was_built_from(tiny_checkpoint, tmp_path):
    """While a run replaces checkpoint_last.pt (a teacher evaluates in 03 while 02 trains), every load names
    the weights it loaded: never one epoch's weights under the next epoch's identity."""
    from mocolab import weights

    state = load_checkpoint(tiny_checkpoint)
    versions = {}
    for epoch in (1, 2):
        state["model"]["encoder_q.backbone.conv1.weight"] += 1.0  # another "epoch"
        path = tmp_path / f"v{epoch}.pt"
        atomic_save(state, path)
        loaded = weights.load(path)
        versions[loaded.identity] = loaded.encoder.state_dict()["backbone.conv1.weight"].clone()
    live, stop = tmp_path / "checkpoint_last.pt", threading.Event()
    live.write_bytes((tmp_path / "v1.pt").read_bytes())

    def trainer():  # replaces the file, as end_of_epoch does, as fast as it can
        while not stop.is_set():
            for epoch in (1, 2):
                atomic_save(load_checkpoint(tmp_path / f"v{epoch}.pt"), live)

    thread = threading.Thread(target=trainer)
    thread.start()
    try:
        for _ in range(12):
            loaded = weights.load(live)
            assert torch.equal(loaded.encoder.state_dict()["backbone.conv1.weight"], versions[loaded.identity])
    finally:
        stop.set()
        thread.join()


# ----------------------------------------------------------------------------
# Odd files in a data folder, and a test split missing a class
# ----------------------------------------------------------------------------


def bomb_png(path, width=30000, height=30000):
    """A 60-byte PNG whose header claims width x height pixels: what a decompression bomb shows a reader."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def odd_folder(root):
    """An ImageFolder of 2 x 4 images plus: a bomb, an image and an empty file named in Latin-1 (not UTF-8),
    and a symlink from cat/ back to cat/ (a loop)."""
    from conftest import write_image_folder

    write_image_folder(root, per_class=4, size=16, splits=("train", "test"))
    cat = root / "train" / "cat"
    bomb_png(cat / "bomb.png")
    latin1 = os.fsencode(cat) + b"/caf\xe9.jpg"
    with open(latin1, "wb") as f:  # a readable image under a name that is not UTF-8
        f.write((cat / "000.jpg").read_bytes())
    open(os.fsencode(cat) + b"/vide\xe9.jpg", "wb").close()  # an unreadable one
    (cat / "loop").symlink_to(cat, target_is_directory=True)
    return root


def test_a_bomb_a_latin1_name_and_a_symlink_loop_are_handled_on_every_data_path(tmp_path, monkeypatch):
    from mocolab.data.datasets import load_split
    from mocolab.data.device import decode_split
    from mocolab.data.jpeg import FileBytes
    from mocolab.run import unreadable

    root = odd_folder(tmp_path / "data")
    monkeypatch.setenv(unreadable.SHARE_ENV, "0.5")  # 2 of 11 files are unreadable: more than a real split may hold
    with pytest.warns(UserWarning, match="not following .*cat/loop: it leads to .*cat, a folder read already"):
        ds = load_split("imagefolder", root, "train")
    names = [unreadable.printable(os.path.basename(p)) for p, _ in ds.samples]
    assert names.count("000.jpg") == 2 and len(ds.samples) == 11  # 8 + bomb + café + vide: the loop adds nothing
    assert "caf\\xe9.jpg" in names

    with unreadable.recording(tmp_path / "unreadable.txt"), pytest.warns(UserWarning, match="skipping unreadable"):
        cpu = [ds[i] for i in range(len(ds))]  # SkipCorruptImageFolder serves the next readable image instead
        images, labels, bad = decode_split(ds, "imagefolder")
        served = [FileBytes(ds.samples)[i][2] for i in range(len(ds))]
    assert len(cpu) == 11 and images.shape[0] == 9 and len(served) == 11
    record = unreadable.recorded(tmp_path / "unreadable.txt")
    bomb = next(why for path, why in record.items() if path.endswith("bomb.png"))
    assert "30000x30000 pixels, above the limit of 89,478,485" in bomb or "exceeds limit" in bomb
    assert any(path.endswith("vide\\xe9.jpg") for path in record) and len(record) == 2
    readable = {p for p, _ in ds.samples if os.path.basename(p) != "bomb.png" and "vide" not in p}
    assert {ds.samples[i][0] for i in served} == readable  # the jpeg path serves each readable file, no other
    just_above = bomb_png(tmp_path / "big.png", 10000, 10000)  # under PIL's own error, above its limit
    assert "10000x10000 pixels, above the limit of 89,478,485" in unreadable.header_problem(just_above)
    with pytest.raises(ValueError, match="10000x10000 pixels"):
        unreadable.open_rgb(just_above)


def test_a_test_split_without_one_class_keeps_the_labels_of_train(tmp_path):
    from conftest import write_image_folder
    from mocolab.data.datasets import DatasetError, load_split

    root = write_image_folder(tmp_path / "data", classes=("cat", "dog", "frog"), per_class=2, size=8)
    for f in (root / "val" / "dog").iterdir():
        f.unlink()
    (root / "val" / "dog").rmdir()
    with pytest.warns(UserWarning, match=r"has no folder of 1 of train/'s classes \(dog\)"):
        test = load_split("imagefolder", root, "test")
    assert test.classes == ["cat", "dog", "frog"] and [y for _, y in test.samples] == [0, 0, 2, 2]  # frog stays 2
    (root / "val" / "bird").mkdir()
    (root / "val" / "bird" / "0.jpg").write_bytes((root / "val" / "cat" / "000.jpg").read_bytes())
    with pytest.raises(DatasetError, match="holds classes that train/ lacks \\(bird\\)"):
        load_split("imagefolder", root, "test")


# ----------------------------------------------------------------------------
# Smaller things: ~, damaged JSON, a cut CSV row, Ctrl-C on the command line
# ----------------------------------------------------------------------------


def test_a_home_folder_a_damaged_json_and_a_cut_metrics_row_are_read_as_meant(tmp_path):
    import json

    from mocolab.sweep import collect, run_state

    cfg = make_config("tiny", output_dir="~/runs/x", data_root="~/data")
    assert cfg.output_dir == os.path.expanduser("~/runs/x") and not cfg.data_root.startswith("~")

    (tmp_path / "sweep.json").write_text('{"preset": "tiny", "base": {')  # cut short
    with pytest.raises(ConfigError, match=r"sweep.json is not valid JSON .*Delete it: the sweep writes it again"):
        collect(tmp_path)

    run = tmp_path / "run"
    run.mkdir()
    done = make_config("tiny", epochs=2, output_dir=str(run))
    header = "epoch,step,lr,loss,acc,pos_sim,neg_sim,knn_top1,train_s,knn_s,images_per_s\n"
    (run / "metrics.csv").write_text(header + "1,4,0.01,4.1,0.1,0.5,0.1,,1.0,,60\n2,8,0.0")  # the last row cut
    assert run_state(run, done) == "new"
    (run / "metrics.csv").write_text(header + "1,4,0.01,4.1,0.1,0.5,0.1,,1.0,,60\n2,8,0.0,4.0,0.2,0.5,0.1,,1.0,,60\n")
    assert run_state(run, done) == "done"
    (run / "metrics.csv").unlink()
    (run / "status.json").write_text(json.dumps({"state": "failed"})[:-3])  # cut short
    with pytest.raises(ConfigError, match=r"status.json is not valid JSON"):
        run_state(run, done)


def test_the_command_line_says_what_was_kept_on_ctrl_c_and_exits_75_when_preempted(capsys):
    from mocolab.run.preemption import Preempted
    from mocolab.ui import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    def preempted(argv):
        raise Preempted("stopped by SIGTERM after step 3 of epoch 2: ...")

    assert cli.run(interrupted, prog="python -m mocolab") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted. What the run wrote is kept" in err and "resume=True" in err
    assert cli.run(preempted, prog="python -m mocolab") == 75
    assert capsys.readouterr().err == "python -m mocolab: stopped by SIGTERM after step 3 of epoch 2: ...\n"


# ----------------------------------------------------------------------------
# Loader workers in a notebook's kernel
# ----------------------------------------------------------------------------

KERNEL_CELL = """
from mocolab import make_config, pretrain
cfg = make_config("tiny", dataset="imagefolder", gpus=0, data_root={root!r}, workers=2, output_dir={out!r})
print("epochs", [row["epoch"] for row in pretrain(cfg).history])
"""


@pytest.mark.slow
def test_pretraining_with_loader_workers_in_a_jupyter_kernel_runs_cell_after_cell(cifar10_root, tmp_path):
    """Forked from a kernel, loader workers aborted in ZeroMQ's assertions (3 of 5 cells here, then the kernel
    died); started from a fork server they do not. Two cells in a row, with progress bars, in one kernel."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        for cell in range(2):
            reply = client.execute_interactive(
                KERNEL_CELL.format(root=str(cifar10_root), out=str(tmp_path / f"run{cell}")),
                timeout=240,
                output_hook=lambda msg: None,
            )
            assert reply["content"]["status"] == "ok", (cell, reply["content"].get("evalue"))
            assert manager.is_alive() and (tmp_path / f"run{cell}" / "checkpoint_last.pt").exists()
    finally:
        manager.shutdown_kernel(now=True)
