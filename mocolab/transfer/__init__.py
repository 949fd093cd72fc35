"""Transfer of a MoCo backbone to detection and segmentation (the reference page's last rows)."""
from .export import FORMATS, backbone_state, export, from_detectron2, to_detectron2

__all__ = ["FORMATS", "backbone_state", "export", "from_detectron2", "to_detectron2"]
