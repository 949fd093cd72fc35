"""Interactive explorers for JupyterLab (ipywidgets).

`AugmentationExplorer` puts every parameter of MoCo v2's aug+ on a slider and
redraws the views in place. The random draws stay fixed while a slider moves
(same seed), so what changes in the figure is the parameter's effect alone;
"new views" draws again. Displayed where widgets cannot run (papermill, a static
viewer), it shows the figure for its current values as a plain PNG.
"""
from __future__ import annotations

import base64
import io

import ipywidgets as W
import matplotlib.pyplot as plt

from .augment import aug_plus
from .viz.augmentation import plot_views

# Slider ranges; the values start at the recipe's (aug_plus' keyword defaults).
_RANGE = dict(step=0.05, continuous_update=False, style={"description_width": "11em"},
              layout=W.Layout(width="30em"))


class AugmentationExplorer:
    """Sliders for aug+ (crop scale, jitter strengths and probability, grayscale, blur) over a few images.

    images: PIL images (e.g. from `data.load_split(..., transform=None)`); size: crop size in pixels.
    """

    def __init__(self, images: list, size: int = 224, views: int = 4, seed: int = 0):
        self.images, self.size, self.views, self.seed = list(images), size, views, seed
        self.controls = {
            "crop_scale": W.FloatRangeSlider(value=(0.2, 1.0), min=0.02, max=1.0, description="crop scale", **_RANGE),
            "brightness": W.FloatSlider(value=0.4, min=0, max=1, description="brightness", **_RANGE),
            "contrast": W.FloatSlider(value=0.4, min=0, max=1, description="contrast", **_RANGE),
            "saturation": W.FloatSlider(value=0.4, min=0, max=1, description="saturation", **_RANGE),
            "hue": W.FloatSlider(value=0.1, min=0, max=0.5, description="hue", **_RANGE),
            "jitter_p": W.FloatSlider(value=0.8, min=0, max=1, description="jitter probability", **_RANGE),
            "gray_p": W.FloatSlider(value=0.2, min=0, max=1, description="grayscale probability", **_RANGE),
            "blur_p": W.FloatSlider(value=0.5, min=0, max=1, description="blur probability", **_RANGE),
            "blur_sigma": W.FloatRangeSlider(value=(0.1, 2.0), min=0.1, max=5.0, description="blur sigma",
                                             **_RANGE),
        }
        self.button = W.Button(description="new views", icon="refresh")
        self.image = W.Image(format="png")
        for control in self.controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.button.on_click(self.new_views)
        self.widget = W.HBox([W.VBox([*self.controls.values(), self.button]), self.image])
        self.redraw()

    def params(self) -> dict:
        """The keyword arguments of `augment.aug_plus` that the sliders set."""
        c = {name: control.value for name, control in self.controls.items()}
        return dict(crop_scale=c["crop_scale"], jitter=(c["brightness"], c["contrast"], c["saturation"], c["hue"]),
                    jitter_p=c["jitter_p"], gray_p=c["gray_p"], blur_p=c["blur_p"], blur_sigma=c["blur_sigma"])

    def transform(self):
        """aug+ with the sliders' values, without normalisation (pixels in [0, 1] for display)."""
        return aug_plus(self.size, normalize=False, **self.params())

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
