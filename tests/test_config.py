"""Config: presets carry the recipes; bad keys, types and combinations fail at once, by name."""
import dataclasses

import pytest

from mocolab import Config, ConfigError, make_config
from mocolab.config import config_from_dict


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


@pytest.mark.parametrize("key,value,message", [
    ("epochs", 2.5, "epochs must be int, got float"),
    ("epochs", True, "epochs must be int, got bool"),
    ("T", "0.2", "T must be float, got str"),
    ("symmetric", 1, "symmetric must be bool"),
    ("arch", "resnet101", "arch='resnet101' is not one of"),
    ("dataset", "mnist", "dataset='mnist' is not one of"),
])
def test_wrong_type_or_choice_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config("cifar10_demo", **{key: value})


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'imagenet'.*cifar10_demo"):
        make_config("imagenet")


def test_K_must_be_divisible_by_keys_per_step():
    with pytest.raises(ConfigError, match="K=1000 must be divisible by the keys enqueued per step"):
        make_config("cifar10_demo", K=1000, batch_size=64)
    make_config("cifar10_demo", K=1024, batch_size=256, bn_splits=8)
    with pytest.raises(ConfigError, match="512 = batch_size 256 x 2 views"):
        make_config("cifar10_demo", K=768, batch_size=256, symmetric=True)


@pytest.mark.parametrize("overrides,message", [
    (dict(batch_size=60, K=600), "batch_size=60 must be divisible by bn_splits=8"),
    (dict(m=1.5), "m must lie in"),
    (dict(T=0.0), "temperatures must be positive"),
    (dict(lr=-1.0), "lr must be positive"),
    (dict(gpus=-2), "gpus must be"),
    (dict(epochs=0), "epochs must be positive"),
])
def test_impossible_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("cifar10_demo", **overrides)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="dim must be positive"):
        Config(dim=0)
