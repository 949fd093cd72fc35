"""Figures: training diagnostics, evaluation results, augmentations and embeddings.

Every function returns a matplotlib Figure; given a path (or a run, for the
training diagnostics) it also writes the figure as a PNG.
"""

from .augmentation import image_grid, plot_blur_scales, plot_operations, plot_positive_pairs, plot_recipes, plot_views
from .embedding import (
    plot_alignment_uniformity,
    plot_embeddings,
    plot_retrieval,
    plot_similarity_histograms,
    plot_thumbnails,
)
from .evaluation import plot_knn, plot_low_shot, plot_svm_layers
from .sweeps import plot_sweep, plot_verdicts
from .transfer import plot_detections, plot_finetune_loss, plot_segmentations
from .training import (
    DIAGNOSTICS,
    plot_instance_accuracy,
    plot_beside_full_run,
    plot_knn_curve,
    plot_loss,
    plot_lr_applied,
    plot_lr_schedule,
    plot_queue_age,
    plot_similarities,
    plot_training_curves,
)

__all__ = [
    "DIAGNOSTICS",
    "image_grid",
    "plot_alignment_uniformity",
    "plot_embeddings",
    "plot_instance_accuracy",
    "plot_knn",
    "plot_beside_full_run",
    "plot_knn_curve",
    "plot_loss",
    "plot_low_shot",
    "plot_lr_applied",
    "plot_lr_schedule",
    "plot_blur_scales",
    "plot_operations",
    "plot_positive_pairs",
    "plot_queue_age",
    "plot_recipes",
    "plot_retrieval",
    "plot_similarities",
    "plot_similarity_histograms",
    "plot_svm_layers",
    "plot_sweep",
    "plot_thumbnails",
    "plot_training_curves",
    "plot_verdicts",
    "plot_views",
    "plot_detections",
    "plot_finetune_loss",
    "plot_segmentations",
]
