"""Published checkpoints: each format's exact key layout loads bit for bit, bad files are named, downloads are
careful, and a file is only ever data.

Every layout is written by tests/layouts.py from the source's own code (cited per writer). The reference
features come from the source module itself, called stage by stage.
"""

import dataclasses
import hashlib
import http.server
import pickle
import re
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import layouts
from layouts import mlp_v2, randomise_bn, resnet50, state
from mocolab import weights
from mocolab.run.checkpoint import CheckpointError, UnsafeFileError
from mocolab.evaluate.features import extract_layers
from mocolab.evaluate.layers import LAYERS, layer_features, layer_pool
from mocolab.weights import registry

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def source_features(net: nn.Module, head: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """feat1..feat5, avgpool and the head output of a torchvision ResNet, called stage by stage."""
    stem = net.relu(net.bn1(net.conv1(X)))
    maps = {"feat1": stem}
    x = net.maxpool(stem)
    for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        x = getattr(net, name)(x)
        maps[f"feat{i + 2}"] = x
    out = {k: layer_pool(v.shape[1], v.shape[-1])(v).flatten(1) for k, v in maps.items()}
    out["avgpool"] = torch.flatten(net.avgpool(x), 1)
    if head is not None:
        out["head"] = head(out["avgpool"])
    return out


@torch.no_grad()
def loaded_features(model: weights.Pretrained) -> dict[str, torch.Tensor]:
    out = layer_features(model.encoder.backbone, X, LAYERS)
    out["avgpool"] = model.encoder.backbone(X)
    if model.encoder.head is not None:
        out["head"] = model.encoder(X)
    return out


def assert_same(model: weights.Pretrained, net: nn.Module, head: nn.Module | None):
    want, got = source_features(net, head), loaded_features(model)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name  # bit for bit


@pytest.fixture(scope="module")
def nets():
    """Query and key networks: the loader must take the query's weights, never the key's."""
    return {"q": resnet50(0), "k": resnet50(1)}


# ----------------------------------------------------------------------------
# The formats
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_official_moco_layout(version, tmp_path):
    q, head = layouts.write_moco_official(tmp_path / "moco.pth.tar", version)
    model = weights.load(tmp_path / "moco.pth.tar")
    assert (model.format, model.arch, model.cifar_stem, model.image_size) == ("moco_official", "resnet50", False, 224)
    assert_same(model, q, head)
    assert any(s.startswith("encoder_k.*") for s in model.set_aside) and model.published is None
    digest = hashlib.sha256((tmp_path / "moco.pth.tar").read_bytes()).hexdigest()
    assert model.identity == f"moco_official-{digest[:16]}"


def test_official_mocov3_layout(tmp_path):
    base, head = layouts.write_mocov3_official(tmp_path / "r-50-300ep.pth.tar")
    model = weights.load(tmp_path / "r-50-300ep.pth.tar")
    assert model.format == "mocov3_official" and isinstance(model.encoder.head[4], nn.BatchNorm1d)
    assert_same(model, base, head)


def test_mmselfsup_0x_layout(nets, tmp_path):
    q, neck = nets["q"], mlp_v2()
    model = weights.load(layouts.write_mmselfsup_0x(tmp_path / "mmselfsup.pth", q, nets["k"], neck))
    assert model.format == "openmmlab"
    assert_same(model, q, nn.Sequential(*[m for m in neck]))
    assert any(s.startswith("encoder_q.*") for s in model.set_aside)  # the second name, not used twice


def test_mmpretrain_1x_layout(nets, tmp_path):
    q, neck = nets["q"], mlp_v2()
    model = weights.load(layouts.write_mmpretrain_1x(tmp_path / "mmpretrain.pth", q, neck))
    assert model.format == "openmmlab"
    assert_same(model, q, neck)


@pytest.mark.parametrize("layout", ["supervised", "backbone only", "extract_backbone_weights"])
def test_torchvision_layouts(layout, nets, tmp_path):
    q = nets["q"]
    model = weights.load(layouts.write_torchvision(tmp_path / "r50.pth", q, layout))
    assert model.format == "torchvision" and not model.has_head
    assert_same(model, q, None)
    assert (len(model.set_aside) == 1) == (layout == "supervised")


def test_detectron2_layout_of_the_official_converter(tmp_path):
    q, head = layouts.write_detectron2(tmp_path / "moco.pkl")
    model = weights.load(tmp_path / "moco.pkl")
    assert model.format == "detectron2"
    assert_same(model, q, head)


def test_every_export_loads_back_with_the_same_features(tmp_path):
    from mocolab import build_model, make_config
    from mocolab.run.checkpoint import atomic_save
    from mocolab.transfer import export

    cfg = make_config("imagenet_mocov2", K=256)
    torch.manual_seed(0)
    moco = build_model(cfg)
    randomise_bn(moco.encoder_q, 3)
    atomic_save(
        {"kind": "pretraining", "model": moco.state_dict(), "config": cfg.to_dict(), "epoch": 1, "history": []},
        tmp_path / "checkpoint_last.pt",
    )
    original = weights.load(tmp_path / "checkpoint_last.pt")
    assert original.format == "mocolab" and original.augmentation == "aug_plus" and original.image_size == 224
    want = loaded_features(original)
    for fmt, name, expected in (
        ("torchvision", "r50.pth", "torchvision"),
        ("mmdet", "r50_mm.pth", "openmmlab"),
        ("detectron2", "r50.pkl", "detectron2"),
    ):
        back = weights.load(export(original, tmp_path / name, fmt))
        assert back.format == expected and not back.has_head
        got = loaded_features(back)
        assert all(torch.equal(got[k], want[k]) for k in got) and set(got) == set(want) - {"head"}, fmt


# ----------------------------------------------------------------------------
# Files that are not what they should be
# ----------------------------------------------------------------------------


def v2_state(q):
    return {"state_dict": state("module.encoder_q.", q), "epoch": 200, "arch": "resnet50"}


def test_a_missing_or_unexpected_key_is_named(tmp_path):
    q = resnet50(0, mlp_v2())
    content = v2_state(q)
    del content["state_dict"]["module.encoder_q.layer1.0.bn1.running_mean"]
    torch.save(content, tmp_path / "missing.pth")
    with pytest.raises(
        CheckpointError,
        match=r"missing\.pth does not fit this model: missing "
        r"layer1\.0\.bn1\.running_mean; unexpected none",
    ):
        weights.load(tmp_path / "missing.pth")
    content = v2_state(q)
    content["state_dict"]["module.encoder_q.layer1.0.extra.weight"] = torch.zeros(1)
    content["state_dict"]["module.something_else"] = torch.zeros(1)
    torch.save(content, tmp_path / "unexpected.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys something_else \(neither the backbone encoder_q"):
        weights.load(tmp_path / "unexpected.pth")
    del content["state_dict"]["module.something_else"]
    torch.save(content, tmp_path / "unexpected.pth")
    with pytest.raises(CheckpointError, match=r"missing none; unexpected layer1\.0\.extra\.weight"):
        weights.load(tmp_path / "unexpected.pth")


def test_another_architecture_and_an_unknown_file_are_named(tmp_path):
    torch.save(torchvision.models.resnet101().state_dict(), tmp_path / "r101.pth")
    with pytest.raises(
        CheckpointError,
        match=r"r101\.pth: a ResNet of bottleneck blocks \(3, 4, 23, 3\), stem "
        r"width 64, which mocolab does not build",
    ):
        weights.load(tmp_path / "r101.pth")
    torch.save(
        {
            "state_dict": {
                "module.base_encoder.cls_token": torch.zeros(1, 1, 384),
                "module.base_encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3),
            }
        },
        tmp_path / "vit.pth.tar",
    )
    with pytest.raises(CheckpointError) as error:
        weights.load(tmp_path / "vit.pth.tar")
    message = str(error.value)
    assert (
        "vit.pth.tar is in no checkpoint format mocolab knows (mocolab, moco_official, mocov3_official, "
        "openmmlab, torchvision, detectron2" in message
    )
    assert "state_dict's begin base_encoder.blocks.0.attn.qkv.weight, base_encoder.cls_token" in message


def test_a_web_page_a_truncated_file_and_a_fine_tuning_checkpoint_are_named(tmp_path):
    (tmp_path / "page.pth").write_text("<!DOCTYPE html>\n<html><body>AccessDenied</body></html>")
    with pytest.raises(
        CheckpointError,
        match=r"page\.pth is a web page \(HTML\), not a checkpoint: the download "
        r"went wrong .* download the file again",
    ):
        weights.load(tmp_path / "page.pth")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(
        CheckpointError,
        match=r"cut\.pth cannot be read .*it may be truncated \(an interrupted "
        r"download or write\): download or copy it again",
    ):
        weights.load(tmp_path / "cut.pth")
    torch.save({"kind": "fine-tuning", "model": {}, "config": {"task": "coco"}}, tmp_path / "ft.pt")
    with pytest.raises(
        CheckpointError,
        match=r"ft\.pt is a mocolab fine-tuning checkpoint \(task coco\), not a "
        r"pretrained encoder",
    ):
        weights.load(tmp_path / "ft.pt")
    with pytest.raises(
        CheckpointError,
        match=r"no checkpoint at .*nothing\.pth, and no published checkpoint is "
        r"called",
    ):
        weights.load(tmp_path / "nothing.pth")


def test_head_features_of_a_backbone_only_file_name_the_file_and_the_fix(nets, tmp_path):
    torch.save({k: v for k, v in nets["q"].state_dict().items() if not k.startswith("fc.")}, tmp_path / "dino.pth")
    model = weights.load(tmp_path / "dino.pth")
    with pytest.raises(
        ValueError,
        match=r"dino\.pth has no projection head \(a backbone-only checkpoint.*\): ask "
        r"for 'avgpool' features instead of 'head'",
    ):
        extract_layers(model.encoder, [(X, torch.zeros(2))], ("head",), progress=False)


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------


def test_the_registry_cites_its_sources_and_uses_the_reference_keys():
    from mocolab.reference import EVALUATION, TRANSFER

    names = set(weights.REGISTRY)
    assert {"moco_v1_200ep", "moco_v2_200ep", "moco_v2_800ep", "mmselfsup_mocov2_200ep", "torchvision_r50_v1"} <= names
    assert (
        len(
            [
                p
                for p in weights.REGISTRY.values()
                if p.self_supervised and p.repo not in ("facebookresearch/moco", "open-mmlab/mmselfsup")
            ]
        )
        >= 2
    )
    for p in weights.REGISTRY.values():
        assert p.format in weights.FORMATS and re.fullmatch(r"[0-9a-f]{40}|v[\d.]+", p.commit), p.name
        if p.packaged:  # shipped with mocolab (the teaching checkpoint): a file in the package, mocolab's numbers
            assert not p.url and (Path(weights.__file__).parent / p.packaged).is_file() and p.numbers_source
            continue
        assert p.url.startswith("https://") and p.layout_source and p.numbers_source and p.numbers, p.name
        assert p.checksum is None or re.fullmatch(r"(md5|sha256):[0-9a-f]{8}", p.checksum), p.name
        assert set(p.numbers) <= set(EVALUATION) | set(TRANSFER) | {"imagenet_classifier"}, p.name
    # OpenMMLab and torchvision name files by a sha256 prefix; the official MoCo README gives md5 prefixes.
    for p in weights.REGISTRY.values():
        if p.checksum and p.checksum.startswith("sha256") and not p.packaged:
            assert p.filename.removesuffix(".pth").endswith(p.checksum.split(":")[1]), p.name
    assert weights.entry("mmselfsup_mocov2_200ep").numbers["svm_voc07"] == {"feat5": 84.04}
    assert weights.entry("moco_v2_200ep").checksum == "md5:59fd9945"
    with pytest.raises(KeyError, match="no published checkpoint called 'moco_v9'; known: moco_v1_200ep"):
        weights.entry("moco_v9")


# ----------------------------------------------------------------------------
# Downloads, from a server on 127.0.0.1 (tests never reach the internet)
# ----------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves server.files; honours Range; can cut a response short, corrupt it or answer with a web page."""

    def do_GET(self):
        s = self.server
        s.requests.append(self.headers.get("Range"))
        body = s.files[self.path]
        start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "text/html" if s.mode == "html" else "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        if s.mode == "cut":
            s.mode = None  # only the first response breaks off
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if s.mode == "corrupt":
            payload = payload[:100] + bytes(b ^ 0xFF for b in payload[100:110]) + payload[110:]
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    httpd.files, httpd.requests, httpd.mode = {}, [], None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("MOCOLAB_OFFLINE")


def published_file(server, tmp_path, name="r50_test"):
    """A torchvision-layout ResNet-50 served at /<name>.pth, and a registry entry that points at it."""
    torch.save({k: v for k, v in resnet50(0).state_dict().items() if not k.startswith("fc.")}, tmp_path / "src.pth")
    data = (tmp_path / "src.pth").read_bytes()
    server.files[f"/{name}.pth"] = data
    entry = dataclasses.replace(
        weights.entry("dino_r50"),
        name=name,
        url=f"http://127.0.0.1:{server.server_address[1]}/{name}.pth",
        checksum=f"sha256:{hashlib.sha256(data).hexdigest()[:8]}",
    )
    return entry, data


def test_fetch_downloads_checks_and_loads_by_name(server, online, tmp_path, monkeypatch):
    entry, data = published_file(server, tmp_path)
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    path = weights.fetch(entry.name, progress=False)
    assert path == weights.cache_dir() / "r50_test.pth" and path.read_bytes() == data
    assert not list(path.parent.glob("*.part"))
    model = weights.load(entry.name)  # in the cache now: no second request
    assert model.published == entry and model.identity.startswith("r50_test-") and server.requests == [None]
    assert "sha256 matches the published" in model.summary()
    assert weights.load(path).published == entry  # a file is recognised by its checksum, whatever its path


def test_an_interrupted_download_resumes_where_it_broke_off(server, online, tmp_path):
    entry, data = published_file(server, tmp_path)
    server.mode = "cut"
    with pytest.raises(
        weights.DownloadError,
        match=r"broke off at [\d,]+ of [\d,]+ bytes; run fetch again to "
        r"resume it from .*r50_test\.pth\.part",
    ):
        weights.fetch(entry, tmp_path / "cache", progress=False)
    part = tmp_path / "cache" / "r50_test.pth.part"
    half = part.stat().st_size
    assert 0 < half < len(data)
    path = weights.fetch(entry, tmp_path / "cache", progress=False)
    assert server.requests == [None, f"bytes={half}-"] and path.read_bytes() == data and not part.exists()


def test_corrupted_bytes_are_refused_and_nothing_stays_in_the_cache(server, online, tmp_path):
    entry, _ = published_file(server, tmp_path)
    server.mode = "corrupt"
    with pytest.raises(
        weights.DownloadError,
        match=r"arrived with sha256 [0-9a-f]{16}\.\.\., not the published "
        r"sha256:[0-9a-f]{8}: the file was deleted",
    ):
        weights.fetch(entry, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_web_page_in_place_of_the_file_is_refused(server, online, tmp_path):
    entry, _ = published_file(server, tmp_path)
    server.mode = "html"
    with pytest.raises(weights.DownloadError, match=r"sent a web page \(HTML\), not a checkpoint"):
        weights.fetch(entry, tmp_path / "cache", progress=False)


def test_unreachable_or_offline_says_which_url_to_fetch_and_where_to_put_it(server, online, tmp_path, monkeypatch):
    entry, _ = published_file(server, tmp_path)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(weights.DownloadError) as error:
        weights.fetch(entry, tmp_path / "cache", progress=False, timeout=5)
    assert str(error.value).startswith(f"cannot reach 127.0.0.1:{port} (") and "\n" not in str(error.value)
    where = tmp_path / "cache" / "r50_test.pth"
    assert str(error.value).endswith(f"download {entry.url} by hand and put it at {where}")
    with pytest.raises(
        weights.DownloadError,
        match=r"dino_r50 is not in the cache \(.*dino_resnet50_pretrain\.pth\): "
        r"run `python -m mocolab\.weights fetch dino_r50`",
    ):
        weights.load("dino_r50", download_missing=False)
    monkeypatch.setenv("MOCOLAB_OFFLINE", "1")
    with pytest.raises(
        weights.DownloadError,
        match=r"moco_v2_800ep is not in the cache and MOCOLAB_OFFLINE=1 forbids "
        r"downloads: download https://dl\.fbaipublicfiles\.com/moco/.* by "
        r"hand and put it at ",
    ):
        weights.load("moco_v2_800ep")


def test_a_cached_file_that_is_not_the_published_one_is_refused(tmp_path, monkeypatch):
    """A file put in the cache under a published name (by hand, or a download gone wrong) must match its checksum."""
    torch.save({k: v for k, v in resnet50(0).state_dict().items()}, weights.cache_dir() / "resnet50-0676ba61.pth")
    with pytest.raises(
        weights.DownloadError,
        match=r"resnet50-0676ba61\.pth is not the published torchvision_r50_v1: "
        r"its sha256 begins [0-9a-f]{8}, the source publishes "
        r"sha256:0676ba61\. Delete it and run `python -m mocolab\.weights "
        r"fetch torchvision_r50_v1`",
    ):
        weights.load("torchvision_r50_v1")
    (weights.cache_dir() / "resnet50-0676ba61.pth").unlink()


# ----------------------------------------------------------------------------
# A file is data: no entry point runs what a crafted file holds
# ----------------------------------------------------------------------------


class Payload:
    """Unpickling this creates the file `marker`: what a crafted checkpoint would do, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path, marker, **extra):
    """A file shaped like a mocolab pretraining checkpoint whose model is the payload."""
    from mocolab import make_config

    cfg = make_config("cifar10_demo", **extra)
    torch.save(
        {
            "kind": "pretraining",
            "model": Payload(marker),
            "config": cfg.to_dict(),
            "epoch": 1,
            "history": [],
            "steps": [],
        },
        path,
    )
    return path


def test_every_entry_point_refuses_a_crafted_checkpoint_before_it_runs(cifar10_root, tmp_path):
    from mocolab import load_run, make_config, pretrain
    from mocolab.evaluate.suite import evaluate
    from mocolab.transfer import export, fine_tune
    from mocolab.transfer.job import make_transfer_config
    from mocolab.transfer.synthetic import dataset_for

    marker = tmp_path / "payload_ran"
    evil = crafted(tmp_path / "evil.pt", marker)
    pkl = tmp_path / "evil.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": Payload(marker)}}, f)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    crafted(run_dir / "checkpoint_last.pt", marker)
    voc_root, train_sets = dataset_for("voc_detection", tmp_path / "voc")
    ft_dir = tmp_path / "ft"
    ft_dir.mkdir()
    torch.save(
        {"kind": "fine-tuning", "model": Payload(marker), "config": {"task": "voc_detection"}},
        ft_dir / "checkpoint_last.pt",
    )
    transfer = dict(
        task="voc_detection", data_root=voc_root, train_sets=train_sets, preset="tiny", gpus=0, workers=0, iterations=1
    )
    entry_points = {
        "weights.load": lambda: weights.load(evil),
        "weights.load (detectron2 pickle)": lambda: weights.load(pkl),
        "evaluate": lambda: evaluate(
            checkpoint=str(evil),
            dataset="imagefolder",
            data_root=str(cifar10_root),
            output_dir=str(tmp_path / "eval"),
            progress=False,
        ),
        "resume": lambda: pretrain(
            make_config(
                "cifar10_demo",
                dataset="imagefolder",
                data_root=str(cifar10_root),
                gpus=0,
                output_dir=str(run_dir),
                resume=True,
            ),
            progress=False,
        ),
        "load_run": lambda: load_run(run_dir),
        "export": lambda: export(evil, tmp_path / "out.pth"),
        "fine-tuning from it": lambda: fine_tune(
            make_transfer_config(weights=str(evil), **transfer, output_dir=str(tmp_path / "ft_new")), progress=False
        ),
        "fine-tuning resumed": lambda: fine_tune(
            make_transfer_config(**transfer, output_dir=str(ft_dir), resume=True), progress=False
        ),
        "summary": lambda: weights.load(evil).summary(),
    }
    for name, call in entry_points.items():
        with pytest.raises(
            UnsafeFileError,
            match=r"reading it would run code \((io|builtins)\.open\).*Nothing in it "
            r"has run",
        ):
            call()
        assert not marker.exists(), name


def test_mocolab_checkpoints_hold_data_only(tiny_checkpoint):
    """A pretraining checkpoint loads with torch's own weights-only unpickler and no allowlist: the RNG states
    are tensors and plain values, the optimiser's lr a Python float."""
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor) and isinstance(state["rng"]["python"], tuple)
    assert type(state["optimizer"]["param_groups"][0]["lr"]) is float


def test_the_command_line_lists_the_registry_and_describes_a_file(nets, tmp_path, capsys):
    from mocolab.weights.__main__ import main

    main(["list"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in weights.REGISTRY) and "md5:59fd9945" in listed
    main(["info", str(layouts.write_torchvision(tmp_path / "r50.pth", nets["q"]))])
    info = capsys.readouterr().out
    assert "resnet50 backbone only (no projection head)" in info and "read and converted in" in info
    assert "set aside: fc.* (a supervised classifier, not a projection head)" in info
