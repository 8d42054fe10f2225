"""Held-out metrics of a model's probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from dal_widgets.training._inference import predict

__all__ = ["evaluate_model", "held_out_metrics"]


def held_out_metrics(probs: np.ndarray, y_eval: np.ndarray, multi_label: bool) -> dict[str, Any]:
    """``accuracy`` (micro-F1 for multi-label data, with ``subset_accuracy`` beside it) of
    softmax rows, or per-class sigmoids, against the held-out targets."""
    if multi_label:
        # The learning curve's "accuracy" is micro-F1 for multi-label data.
        pred, true = probs >= 0.5, y_eval.astype(bool)
        tp = float((pred & true).sum())
        return {
            "accuracy": 2 * tp / max(float(pred.sum() + true.sum()), 1.0),
            "metric": "micro-F1",
            "subset_accuracy": float((pred == true).all(1).mean()),
        }
    return {"accuracy": float((probs.argmax(1) == y_eval).mean())}


def evaluate_model(
    model: nn.Module,
    X_eval: Any,
    y_eval: np.ndarray,
    *,
    multi_label: bool,
    config: Any,
    device: Any,
) -> dict[str, Any]:
    """:func:`held_out_metrics` of ``model`` on a held-out split (chunked inference)."""
    key = "label_probs" if multi_label else "probs"
    probs = predict(
        model,
        X_eval,
        [key],
        device=device,
        batch_size=config.inference_batch_size,
        precision=config.precision,
    )[key]
    return held_out_metrics(probs, y_eval, multi_label)
