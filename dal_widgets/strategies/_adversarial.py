"""Adversarial: samples closest to the decision boundary by DeepFool distance.

Reference: Ducoffe & Precup, "Adversarial active learning for deep networks: a margin based
approach" (arXiv 1802.09841, 2018), DFAL. Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool"
(CVPR 2016), for the attack. The training layer runs DeepFool and passes each sample's
perturbation norm as ``adv_dist``; the paper also adds the adversarial examples to the
training set with the queried labels, which is the training layer's business too.
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._registry import register

__all__ = ["dfal"]


@register("dfal", needs={"adv_dist"})
def dfal(adv_dist: np.ndarray):
    """DFAL: smallest DeepFool perturbation first, the samples nearest the boundary (Ducoffe & Precup 2018)."""
    return -np.asarray(adv_dist, dtype=np.float64)
