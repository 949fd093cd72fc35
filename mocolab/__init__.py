"""mocolab: learn, reproduce and analyse MoCo v2 (Chen, Fan, Girshick, He 2020)."""

from .config import PRESETS, Config, ConfigError, make_config
from .moco import MoCo, MoCoOutput, info_nce
from .models import SplitBatchNorm, build_encoder
from .runlog import Run
from .pretraining import load_run, pretrain
from .train import build_model, lr_schedule

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "Config",
    "ConfigError",
    "make_config",
    "MoCo",
    "MoCoOutput",
    "info_nce",
    "SplitBatchNorm",
    "build_encoder",
    "Run",
    "build_model",
    "load_run",
    "lr_schedule",
    "pretrain",
]
