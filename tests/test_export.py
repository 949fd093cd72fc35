"""Exported backbones load where the issue says they must, and convert back to the same tensors."""

import pickle

import pytest
import torch
import torchvision

from mocolab import build_model, make_config
from mocolab.run.checkpoint import CheckpointError, atomic_save
from mocolab.transfer import export, from_detectron2
from mocolab.transfer.export import main


def save_checkpoint(path, **overrides):
    cfg = make_config("imagenet_mocov2", K=256, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    for module in model.modules():  # non-trivial BN statistics, so a mix-up of buffers would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    atomic_save({"kind": "pretraining", "model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1}, path)
    return model.encoder_q.backbone.eval()


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_last.pt"
    return path, save_checkpoint(path)


def test_torchvision_export_loads_into_resnet50_with_only_fc_missing(r50, tmp_path):
    path, backbone = r50
    weights = torch.load(export(path, tmp_path / "r50.pth", "torchvision"), weights_only=True)
    net = torchvision.models.resnet50()
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    net.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), backbone(x), atol=1e-5)


def test_detectron2_export_has_detectron2_names_and_converts_back(r50, tmp_path):
    path, backbone = r50
    with open(export(path, tmp_path / "r50.pkl", "detectron2"), "rb") as f:
        saved = pickle.load(f)
    assert saved["matching_heuristics"] is True
    model = saved["model"]
    for name in (
        "stem.conv1.weight",
        "stem.conv1.norm.running_mean",
        "res2.0.conv1.weight",
        "res2.0.conv3.norm.bias",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.running_var",
        "res5.2.conv2.norm.weight",
        "res4.5.conv1.weight",
    ):
        assert name in model, name
    assert not any("layer" in k or "bn" in k or "downsample" in k or "fc" in k for k in model)
    back = from_detectron2(model)
    original = backbone.state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_mmdet_export_prefixes_backbone(r50, tmp_path):
    path, backbone = r50
    state = torch.load(export(path, tmp_path / "r50_mm.pth", "mmdet"), weights_only=True)["state_dict"]
    assert all(k.startswith("backbone.") for k in state)
    original = backbone.state_dict()
    assert {k.removeprefix("backbone."): v for k, v in state.items()}.keys() == original.keys()
    assert all(torch.equal(state["backbone." + k], v) for k, v in original.items())


def test_cifar_stem_and_foreign_files_are_refused_by_name(tmp_path):
    path = tmp_path / "cifar.pt"
    save_checkpoint(path, arch="resnet18", cifar_stem=True, head="linear")
    with pytest.raises(CheckpointError, match=r"conv1\.weight is \(64, 3, 3, 3\), the CIFAR stem"):
        export(path, tmp_path / "x.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(
        CheckpointError,
        match=r"other\.pth is in no checkpoint format mocolab knows \(mocolab, "
        r"moco_official, .*\); its keys are state_dict",
    ):
        export(tmp_path / "other.pth", tmp_path / "y.pth")
    with pytest.raises(ValueError, match="unknown format"):
        export(path, tmp_path / "z.pth", "onnx")


def test_command_line(r50, tmp_path, capsys):
    main([str(r50[0]), str(tmp_path / "out.pkl"), "--format", "detectron2"])
    assert (tmp_path / "out.pkl").stat().st_size > 90e6  # ResNet-50's 25.6M parameters in fp32
    assert "out.pkl" in capsys.readouterr().out
