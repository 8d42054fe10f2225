"""Uncertainty for multi-label classification, on independent per-class probabilities.

References: Yang et al., "Effective multi-label active learning for text classification"
(KDD 2009), for per-label uncertainty; Brinker, "On active learning in multi-label
classification" (2006), for the most uncertain single label.
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._registry import register

__all__ = ["multilabel_entropy", "multilabel_margin"]


def _check_range(label_probs: np.ndarray) -> np.ndarray:
    p = np.asarray(label_probs, dtype=np.float64)
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            "The 'label_probs' parameter must hold per-class probabilities in [0, 1] (sigmoid "
            f"outputs). Got values in [{p.min():.4g}, {p.max():.4g}] instead (did you pass logits?)."
        )
    return p


@register("multilabel_entropy", needs={"label_probs"})
def multilabel_entropy(label_probs: np.ndarray):
    """Mean binary entropy over the classes: unsure about many labels (Yang et al., KDD 2009)."""
    p = np.clip(_check_range(label_probs), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean(axis=1)


@register("multilabel_margin", needs={"label_probs"})
def multilabel_margin(label_probs: np.ndarray):
    """The one class closest to the 0.5 decision threshold (Brinker 2006)."""
    return -np.abs(_check_range(label_probs) - 0.5).min(axis=1)
