"""Evaluations of a pretrained encoder: functions of feature tensors, with extraction kept apart."""

from .features import extract_features, extract_layers
from .knn import knn_accuracy, knn_scores

__all__ = ["extract_features", "extract_layers", "knn_accuracy", "knn_scores"]
