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


def evaluate_model(model: nn.Module, dataset: Any, *, config: Any, device: Any) -> dict[str, Any]:
    """:func:`held_out_metrics` of ``model`` on ``dataset``'s held-out split (chunked
    inference), with ``n_eval``."""
    assert dataset.X_eval is not None and dataset.y_eval is not None
    key = "label_probs" if dataset.multi_label else "probs"
    probs = predict(
        model,
        dataset.X_eval,
        [key],
        device=device,
        batch_size=config.inference_batch_size,
        precision=config.precision,
    )[key]
    metrics = held_out_metrics(probs, dataset.y_eval, dataset.multi_label)
    return {**metrics, "n_eval": len(dataset.y_eval)}
