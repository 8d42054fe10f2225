"""Learned loss: rank by the loss a loss-prediction head expects.

Reference: Yoo & Kweon, "Learning loss for active learning" (CVPR 2019). The head is trained
next to the model by the training layer; the strategy only ranks its outputs.
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._registry import register

__all__ = ["learning_loss"]


@register("learning_loss", needs={"loss_pred"})
def learning_loss(loss_pred: np.ndarray):
    """Learning loss: the largest loss predicted by a loss-prediction head (Yoo & Kweon, CVPR 2019)."""
    return np.asarray(loss_pred, dtype=np.float64)
