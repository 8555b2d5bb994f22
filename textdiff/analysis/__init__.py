"""Analyses of trained models (pure torch): the embedding-space measures of Difformer's §3."""
from textdiff.analysis.embeddings import (
    anisotropy,
    nearest_neighbor_distances,
    noise_to_distance_ratio,
    noisy_nearest_accuracy,
    norm_by_frequency,
    rankdata,
    spearman,
)

__all__ = [
    "anisotropy",
    "nearest_neighbor_distances",
    "noise_to_distance_ratio",
    "noisy_nearest_accuracy",
    "norm_by_frequency",
    "rankdata",
    "spearman",
]
