"""Uncertainty sampling on softmax probabilities, and random sampling.

References: Lewis & Gale, "A sequential algorithm for training text classifiers" (SIGIR 1994);
Scheffer et al., "Active hidden Markov models for information extraction" (IDA 2001, margin);
Shannon entropy as in Settles, "Active Learning Literature Survey" (2009), section 3.1.
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._registry import register

__all__ = ["entropy", "least_confidence", "margin", "random", "ratio"]


def _top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and second-largest probability per row (one partial sort, no full sort)."""
    if probs.shape[1] == 1:
        first = probs[:, 0]
        return first, np.zeros_like(first)
    part = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return part[:, 1], part[:, 0]


@register("random", kind="batch")
def random(n, *, candidates, labeled_mask, rng):
    """Uniformly random unlabeled samples: the baseline every strategy must beat."""
    return rng.choice(candidates, size=n, replace=False)


@register("least_confidence", needs={"probs"})
def least_confidence(probs):
    """Least confidence: 1 - max class probability (Lewis & Gale, SIGIR 1994)."""
    return 1.0 - probs.max(axis=1)


@register("margin", needs={"probs"})
def margin(probs):
    """Smallest margin between the top two class probabilities (Scheffer et al., IDA 2001)."""
    first, second = _top2(probs)
    return -(first - second)


@register("ratio", needs={"probs"})
def ratio(probs):
    """Ratio of confidences: second-best over best probability, 1 = a tie (Settles 2009)."""
    first, second = _top2(probs)
    return second / np.maximum(first, np.finfo(np.float64).tiny)


@register("entropy", needs={"probs"})
def entropy(probs):
    """Shannon entropy of the predicted class distribution (Settles 2009, section 3.1)."""
    p = probs.astype(np.float64, copy=False)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
