"""Figures: training diagnostics, evaluation results, augmentations and embeddings.

Every function returns a matplotlib Figure; given a path (or a run, for the
training diagnostics) it also writes the figure as a PNG.
"""
from .evaluation import plot_knn, plot_low_shot, plot_svm_layers
from .training import (DIAGNOSTICS, plot_instance_accuracy, plot_knn_curve, plot_loss, plot_lr_applied,
                       plot_lr_schedule, plot_queue_age, plot_similarities, plot_training_curves)

__all__ = ["DIAGNOSTICS", "plot_instance_accuracy", "plot_knn", "plot_knn_curve", "plot_loss", "plot_low_shot",
           "plot_lr_applied", "plot_lr_schedule", "plot_queue_age", "plot_similarities", "plot_svm_layers",
           "plot_training_curves"]
