"""Published checkpoints in, safely: a registry (registry.py), their key layouts (formats.py), a careful
download (download.py) and one loaded object for every consumer (pretrained.py).

    from mocolab import weights
    model = weights.load("moco_v2_800ep")   # or a path to any checkpoint of a known format
    print(model.summary())
"""

from .download import DownloadError, cache_dir, fetch
from .formats import FORMATS
from .pretrained import Pretrained, load
from .registry import REGISTRY, Published, entry
from .teaching import NAME as TEACHING

__all__ = [
    "DownloadError",
    "FORMATS",
    "Pretrained",
    "Published",
    "REGISTRY",
    "TEACHING",
    "cache_dir",
    "entry",
    "fetch",
    "load",
]
