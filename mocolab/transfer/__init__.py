"""Transfer of a MoCo backbone to detection and segmentation (the reference page's last rows)."""

from ..weights.formats import from_detectron2, to_detectron2
from .export import FORMATS, backbone_state, export
from .job import TransferConfig, TransferRun, fine_tune, load_transfer_run

__all__ = [
    "FORMATS",
    "TransferConfig",
    "TransferRun",
    "backbone_state",
    "export",
    "fine_tune",
    "from_detectron2",
    "load_transfer_run",
    "to_detectron2",
]
