"""The one lr-schedule helper: cosine per step and per epoch, steps, poly, and warm-up, against the formulas."""

import math

import numpy as np
import pytest

from mocolab import lr_schedule, make_config
from mocolab.schedule import lr_schedule as schedule


def test_per_epoch_cosine_is_the_official_formula():
    lrs = schedule(0.06, epochs=10, steps_per_epoch=4, per_step=False)
    assert len(lrs) == 40
    for epoch in range(10):  # main_moco.py: lr = base * 0.5 * (1 + cos(pi * epoch / epochs)), epochs from 0
        expected = 0.06 * 0.5 * (1 + math.cos(math.pi * epoch / 10))
        assert np.allclose(lrs[epoch * 4 : (epoch + 1) * 4], expected)


def test_per_step_cosine_decreases_every_step_to_near_zero():
    lrs = schedule(0.03, epochs=5, steps_per_epoch=10, per_step=True)
    assert lrs[0] == pytest.approx(0.03) and np.all(np.diff(lrs) < 0)
    assert lrs[25] == pytest.approx(0.015) and lrs[-1] < 0.03 * 1e-3


@pytest.mark.parametrize("per_step", [True, False])
def test_warmup_ramps_linearly_from_the_warmup_factor_then_the_cosine_starts_at_base(per_step):
    """The default config's per-epoch schedule too: the warm-up still ramps every step."""
    lrs = schedule(0.1, epochs=10, steps_per_epoch=5, warmup_epochs=2, per_step=per_step, warmup_factor=0.001)
    alpha = np.arange(10) / 10
    assert np.allclose(lrs[:10], 0.1 * (0.001 * (1 - alpha) + alpha))
    assert lrs[10] == pytest.approx(0.1)
    after = np.arange(10, 50)
    t = after / 5 if per_step else np.floor(after / 5)
    assert np.allclose(lrs[10:], 0.1 * 0.5 * (1 + np.cos(np.pi * (t - 2) / 8)))


def test_the_config_schedule_is_the_helper_with_the_configs_settings():
    cfg = make_config("cifar10_demo", epochs=4, warmup_epochs=1, lr=0.06, batch_size=64, K=1024)
    assert np.array_equal(lr_schedule(cfg, 3), schedule(0.06, 4, 3, per_step=False, warmup_epochs=1))
    stepped = make_config("cifar10_demo", epochs=4, lr_schedule="cosine_step", batch_size=64, K=1024)
    assert np.array_equal(lr_schedule(stepped, 3), schedule(0.06, 4, 3, per_step=True))


def test_step_and_poly_shapes():
    lrs = schedule(30.0, epochs=100, shape="step", milestones=(60, 80))  # the AvgPool probe, one lr per epoch
    assert lrs[59] == 30.0 and lrs[60] == pytest.approx(3.0) and lrs[80] == pytest.approx(0.3)
    poly = schedule(0.01, epochs=10, shape="poly", power=0.9, min_lr=1e-4)
    assert np.allclose(poly, (0.01 - 1e-4) * (1 - np.arange(10) / 10) ** 0.9 + 1e-4)
    with pytest.raises(ValueError, match="unknown schedule shape 'linear'"):
        schedule(0.1, 10, shape="linear")
