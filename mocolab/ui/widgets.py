"""Interactive explorers for JupyterLab (ipywidgets).

`AugmentationExplorer` puts every parameter of an augmentation recipe (aug+
by default; augment.recipes) on a slider, starting at the recipe's values,
and redraws the views in place. The random draws stay fixed while a slider moves
(same seed), so what changes in the figure is the parameter's effect alone;
"new views" draws again. Displayed where widgets cannot run (papermill, a static
viewer), it shows the figure for its current values as a plain PNG.
"""

from __future__ import annotations

import base64
import dataclasses
import io

import ipywidgets as W
import matplotlib.pyplot as plt

from ..augment import RECIPES, Recipe, pipeline
from ..viz.augmentation import plot_views

# Sliders sit in a two-column grid above the image, each as wide as its column: beside the image, at a fixed
# width, their readouts ("0.20 – 1.00") were cut off and the output scrolled sideways.
_RANGE = dict(
    step=0.05,
    continuous_update=False,
    readout_format=".2f",
    style={"description_width": "12em"},
    layout=W.Layout(width="auto", min_width="28em"),
)


def _sliders(r: Recipe) -> dict:
    """A slider for every parameter of the recipe's operations, starting at the recipe's value."""
    b, c, s, h = r.jitter
    sliders = {
        "crop_scale": W.FloatRangeSlider(value=r.crop_scale, min=0.02, max=1.0, description="crop scale", **_RANGE)
    }
    if "jitter" in r.order:
        sliders.update(
            brightness=W.FloatSlider(value=b, min=0, max=1, description="brightness", **_RANGE),
            contrast=W.FloatSlider(value=c, min=0, max=1, description="contrast", **_RANGE),
            saturation=W.FloatSlider(value=s, min=0, max=1, description="saturation", **_RANGE),
            hue=W.FloatSlider(value=h, min=0, max=0.5, description="hue", **_RANGE),
            jitter_p=W.FloatSlider(value=r.jitter_p, min=0, max=1, description="jitter probability", **_RANGE),
        )
    if "gray" in r.order:
        sliders["gray_p"] = W.FloatSlider(value=r.gray_p, min=0, max=1, description="grayscale probability", **_RANGE)
    if "blur" in r.order:
        sliders["blur_p"] = W.FloatSlider(value=r.blur_p, min=0, max=1, description="blur probability", **_RANGE)
        sliders["blur_sigma"] = W.FloatRangeSlider(
            value=r.blur_sigma, min=0.1, max=5.0, description="blur sigma", **_RANGE
        )
    return sliders


class AugmentationExplorer:
    """Sliders for a recipe (crop scale, jitter strengths and probability, grayscale, blur) over a few images.

    images: PIL images (e.g. from `data.load_split(..., transform=None)`); size: crop size in pixels;
    recipe: "aug_plus", "v1" or "cifar" (augment.RECIPES), whose values the sliders start at.
    """

    def __init__(self, images: list, size: int = 224, views: int = 4, seed: int = 0, recipe: str = "aug_plus"):
        self.images, self.size, self.views, self.seed = list(images), size, views, seed
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
        self.recipe = RECIPES[recipe].at(size)
        self.controls = _sliders(self.recipe)
        self.button = W.Button(description="new views", icon="refresh")
        self.image = W.Image(format="png", layout=W.Layout(width="100%", max_width="60em", height="auto"))
        for control in self.controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.button.on_click(self.new_views)
        grid = W.GridBox(
            list(self.controls.values()),
            layout=W.Layout(
                grid_template_columns="repeat(auto-fit, minmax(28em, 1fr))", grid_gap="0 1.5em", width="100%"
            ),
        )
        self.widget = W.VBox([grid, self.button, self.image], layout=W.Layout(width="100%", overflow="hidden"))
        self.redraw()

    def params(self) -> dict:
        """The Recipe fields that the sliders set."""
        c = {name: control.value for name, control in self.controls.items()}
        params = {"crop_scale": c["crop_scale"]}
        if "brightness" in c:
            params.update(jitter=(c["brightness"], c["contrast"], c["saturation"], c["hue"]), jitter_p=c["jitter_p"])
        params.update({k: c[k] for k in ("gray_p", "blur_p", "blur_sigma") if k in c})
        return params

    def transform(self):
        """The recipe with the sliders' values, without normalisation (pixels in [0, 1] for display)."""
        return pipeline(dataclasses.replace(self.recipe, **self.params()), normalize=False)

    def figure(self):
        """A matplotlib figure of the images and their views for the current values and seed."""
        return plot_views(self.images, self.transform(), views=self.views, seed=self.seed)

    def redraw(self) -> None:
        fig = self.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)  # the widget holds the PNG; an open figure would also print below the cell
        self.image.value = buffer.getvalue()

    def new_views(self, _=None) -> None:
        self.seed += 1
        self.redraw()

    def _repr_mimebundle_(self, **kwargs):
        # The widget where a widget manager runs (JupyterLab), the PNG elsewhere.
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle = dict(bundle)
        bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")  # notebooks store PNGs as base64
        return bundle
