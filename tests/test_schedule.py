"""The cosine schedule, per step and per epoch, with warm-up."""
import math

import numpy as np
import pytest

from mocolab.schedule import cosine_schedule


def test_per_epoch_cosine_is_the_official_formula():
    lrs = cosine_schedule(0.06, epochs=10, steps_per_epoch=4, per_step=False)
    assert len(lrs) == 40
    for epoch in range(10):
        expected = 0.06 * 0.5 * (1 + math.cos(math.pi * epoch / 10))
        assert np.allclose(lrs[epoch * 4:(epoch + 1) * 4], expected)


def test_per_step_cosine_decreases_every_step_to_near_zero():
    lrs = cosine_schedule(0.03, epochs=5, steps_per_epoch=10, per_step=True)
    assert lrs[0] == pytest.approx(0.03) and np.all(np.diff(lrs) < 0)
    assert lrs[25] == pytest.approx(0.015) and lrs[-1] < 0.03 * 1e-3


def test_warmup_ramps_linearly_then_cosine_starts_at_base():
    lrs = cosine_schedule(0.1, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    assert np.allclose(lrs[:10], 0.1 * np.arange(1, 11) / 10)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[-1] < lrs[10]
