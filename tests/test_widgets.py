"""The augmentation explorer: its sliders set aug+'s parameters and redraw the figure in place."""

import base64

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mocolab import augment
from mocolab.ui.widgets import AugmentationExplorer


@pytest.fixture
def explorer():
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(2)]
    return AugmentationExplorer(images, size=48, views=3)


def test_explorer_starts_at_the_recipe(explorer):
    assert repr(explorer.transform()) == repr(augment.aug_plus(48, normalize=False))


def test_sliders_set_the_recipe_and_redraw_in_place(explorer):
    before = explorer.image.value
    explorer.controls["crop_scale"].value = (0.5, 0.9)
    explorer.controls["hue"].value = 0.3
    explorer.controls["blur_sigma"].value = (1.0, 3.0)
    explorer.controls["gray_p"].value = 1.0
    crop, jitter, gray, blur = explorer.transform().transforms[:4]
    assert crop.scale == (0.5, 0.9) and jitter.transforms[0].hue == (-0.3, 0.3)
    assert gray.p == 1.0 and blur.transforms[0].sigma == [1.0, 3.0]
    assert explorer.image.value != before and explorer.image.value[:4] == b"\x89PNG"


def test_sliders_keep_the_draws_and_the_button_draws_new_ones(explorer):
    first = explorer.image.value
    explorer.controls["brightness"].value = 0.4  # unchanged value: no redraw, same picture
    explorer.redraw()
    assert explorer.image.value == first  # the same seed draws the same views
    explorer.button.click()
    assert explorer.seed == 1 and explorer.image.value != first


def test_explorer_displays_as_a_widget_with_a_static_png_fallback(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == explorer.image.value


def test_recipe_at_zero_strength_is_the_identity():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    recipe = augment.aug_plus(
        32, normalize=False, crop_scale=(1.0, 1.0), jitter=(0, 0, 0, 0), gray_p=0, blur_p=0, flip_p=0
    )
    whole = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])(image)
    for _ in range(5):  # a crop of scale 1 is the whole (square) image, whatever aspect ratio is drawn
        assert torch.allclose(recipe(image), whole, atol=1e-6)
