"""Config: presets carry the recipes; bad keys, types and combinations fail at once, by name."""

import dataclasses

import pytest
import torch

from mocolab import Config, ConfigError, make_config
from mocolab.config import config_from_dict, resolve_preset


def test_cifar10_demo_preset_is_the_official_demo_recipe():
    c = make_config("cifar10_demo")
    assert (c.arch, c.cifar_stem, c.head, c.bn_splits, c.shuffle_bn) == ("resnet18", True, "linear", 8, True)
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.epochs) == (512, 0.06, 0.9, 5e-4, 200)
    assert (c.K, c.m, c.T, c.augmentation, c.image_size) == (4096, 0.99, 0.1, "cifar", 32)
    assert (c.knn_k, c.knn_t, c.knn_feature) == (200, 0.1, "head")


def test_imagenet_preset_is_resnet50_8xb32_coslr_200e():
    c = make_config("imagenet_mocov2")
    assert (c.arch, c.cifar_stem, c.head, c.dim) == ("resnet50", False, "mlp", 128)
    assert (c.K, c.m, c.T) == (65536, 0.999, 0.2)
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.epochs) == (256, 0.03, 0.9, 1e-4, 200)
    assert (c.augmentation, c.image_size, c.lr_schedule, c.warmup_epochs) == ("aug_plus", 224, "cosine_epoch", 0)


def test_overrides_apply_none_keeps_preset_and_config_is_frozen():
    c = make_config("cifar10_demo", epochs=3, lr=None, m=0)
    assert c.epochs == 3 and c.lr == 0.06 and c.m == 0.0 and isinstance(c.m, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 5
    assert config_from_dict(c.to_dict()) == c


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'.*'batch_size'"):
        make_config("cifar10_demo", batchsize=64)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("epochs", 2.5, "epochs must be int, got float"),
        ("epochs", True, "epochs must be int, got bool"),
        ("T", "0.2", "T must be float, got str"),
        ("symmetric", 1, "symmetric must be bool"),
        ("arch", "resnet101", "arch='resnet101' is not one of"),
        ("dataset", "mnist", "dataset='mnist' is not one of"),
    ],
)
def test_wrong_type_or_choice_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config("cifar10_demo", **{key: value})


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'imagenet'.*cifar10_cpu.*cifar10_demo.*'auto'"):
        make_config("imagenet")


def test_auto_picks_the_cpu_recipe_without_a_gpu_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    name, why = resolve_preset("auto", -1)
    assert name == "cifar10_cpu" and why.startswith("no GPU visible: the CPU teaching recipe")
    assert make_config("auto").preset == "cifar10_cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    name, why = resolve_preset("auto", -1)
    assert name == "cifar10_workshop" and why.startswith("2 GPU(s) visible: the CIFAR-10 demo recipe")
    assert resolve_preset("auto", 0) == ("cifar10_cpu", resolve_preset("auto", 0)[1])
    assert resolve_preset("auto", 0)[1].startswith("gpus=0 asks for the CPU although a GPU is visible")
    assert resolve_preset("imagenet_mocov2", 1) == ("imagenet_mocov2", "as asked")


def test_the_cpu_and_workshop_presets_keep_moco_v2_and_size_the_rest():
    cpu, demo = make_config("cifar10_cpu", gpus=0), make_config("cifar10_demo")
    workshop = make_config("cifar10_workshop")
    for field in ("K", "m", "T", "symmetric", "shuffle_bn", "bn_splits", "augmentation", "head", "cifar_stem"):
        assert getattr(cpu, field) == getattr(demo, field) == getattr(workshop, field), field
    assert (cpu.arch, cpu.epochs, cpu.batch_size, cpu.knn_feature) == ("resnet10_w16", 3, 256, "avgpool")
    assert dataclasses.replace(workshop, epochs=200, preset="cifar10_demo") == demo
    with pytest.raises(
        ConfigError,
        match=r"preset cifar10_cpu is the CPU teaching recipe, but gpus=1: on GPUs "
        r"choose one of \['cifar10_demo', 'imagenet_mocov2', 'cifar10_workshop', "
        r"'tiny'\]",
    ):
        make_config("cifar10_cpu", gpus=1)


def test_the_tiny_preset_is_the_demo_recipe_at_smoke_size():
    tiny, demo = make_config("tiny"), make_config("cifar10_demo")
    for field in ("arch", "cifar_stem", "head", "m", "T", "symmetric", "shuffle_bn", "augmentation", "knn_t"):
        assert getattr(tiny, field) == getattr(demo, field), field
    assert (tiny.image_size, tiny.batch_size, tiny.K, tiny.train_subset, tiny.epochs) == (16, 16, 64, 64, 2)
    assert tiny.K % tiny.batch_size == 0 and tiny.knn_bank_size >= tiny.knn_k  # valid as it stands


def test_K_must_be_divisible_by_keys_per_step():
    with pytest.raises(ConfigError, match="K=1000 must be divisible by the keys enqueued per step"):
        make_config("cifar10_demo", K=1000, batch_size=64)
    make_config("cifar10_demo", K=1024, batch_size=256, bn_splits=8)
    with pytest.raises(ConfigError, match="512 = batch_size 256 x 2 views"):
        make_config("cifar10_demo", K=768, batch_size=256, symmetric=True)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(batch_size=60, K=600), "batch_size=60 must be divisible by bn_splits=8"),
        (dict(m=1.5), "m must lie in"),
        (dict(T=0.0), "temperatures must be positive"),
        (dict(lr=-1.0), "lr must be positive"),
        (dict(gpus=-2), "gpus must be"),
        (dict(epochs=0), "epochs must be positive"),
    ],
)
def test_impossible_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("cifar10_demo", **overrides)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="dim must be positive"):
        Config(dim=0)


def test_the_model_fields_are_exactly_those_that_change_the_saved_tensors():
    """config.MODEL_FIELDS (the fields a resume must match) against the model itself: changing one of them
    changes a tensor's shape or the set of tensors; changing any other field changes none."""
    from mocolab.config import MODEL_FIELDS
    from mocolab.train import build_model

    def shapes(cfg):
        return {name: tuple(t.shape) for name, t in build_model(cfg).state_dict().items()}

    base = make_config("tiny", arch="resnet10_w16")
    other = {
        "arch": "resnet18",
        "cifar_stem": False,
        "head": "mlp",
        "dim": 64,
        "K": 128,
        "bn_splits": 4,
        "m": 0.9,
        "T": 0.2,
        "symmetric": True,
        "shuffle_bn": False,
        "image_size": 24,
        "augmentation": "aug_plus",
        "batch_size": 32,
        "knn_feature": "avgpool",
    }
    assert set(MODEL_FIELDS) <= set(other)
    before = shapes(base)
    changes = {name for name, value in other.items() if shapes(dataclasses.replace(base, **{name: value})) != before}
    assert changes == set(MODEL_FIELDS)


def test_every_field_has_one_role_and_execution_fields_do_not_change_what_a_run_computes():
    from mocolab.config import EXECUTION_FIELDS, MODEL_FIELDS, fields_of_role
    from mocolab.sweep import settings

    names = [f.name for f in dataclasses.fields(Config)]
    recipe = fields_of_role("recipe")
    assert sorted(MODEL_FIELDS + EXECUTION_FIELDS + recipe) == sorted(names)
    assert {"output_dir", "resume", "gpus", "workers", "data_path"} <= set(EXECUTION_FIELDS)
    assert {"m", "T", "epochs", "lr", "seed", "dataset", "augmentation"} <= set(recipe)
    cfg = make_config("tiny")
    moved = dataclasses.replace(cfg, output_dir="elsewhere", workers=3, log_every=5, resume=True)
    assert settings(moved) == settings(cfg)
    assert settings(dataclasses.replace(cfg, m=0.5)) != settings(cfg)


def test_one_parser_for_values_typed_as_text_and_its_inverse():
    from mocolab.settings import format_value, parse_override, parse_value

    assert [parse_value(v) for v in ("None", "True", "3", "0.5", "1e-3", "runs/x", "'3'", "a b")] == [
        None,
        True,
        3,
        0.5,
        1e-3,
        "runs/x",
        "3",
        "a b",
    ]
    assert parse_override("data_root=/data/cifar 10") == ("data_root", "/data/cifar 10")
    for value in (None, False, 0, 7, 0.06, 1e-12, "runs/m=0.9", "3", "True", "None", "", "it's", (1, 2), "[1]"):
        text = format_value(value)
        assert parse_value(text) == value and type(parse_value(text)) is type(value), (value, text)
    assert format_value("runs/x") == "runs/x"  # a plain string stays bare, as a user types it


def test_a_saved_config_reads_back_exactly_with_overrides_on_top(tmp_path):
    import json

    from mocolab.config import config_from_file

    cfg = make_config("tiny", lr=0.1 + 0.2, m=1 - 1e-9, output_dir=str(tmp_path / "run"))
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "torch": "2.x"}))  # a run's
    (tmp_path / "bare.json").write_text(json.dumps(cfg.to_dict()))  # what a sweep writes
    assert config_from_file(tmp_path / "config.json") == cfg == config_from_file(tmp_path / "bare.json")
    assert config_from_file(tmp_path / "bare.json", resume=True, epochs=4) == dataclasses.replace(
        cfg, resume=True, epochs=4
    )
    with pytest.raises(ConfigError, match="unknown config key 'epoch'; did you mean 'epochs'"):
        config_from_file(tmp_path / "bare.json", epoch=4)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds no config"):
        config_from_file(tmp_path / "list.json")
