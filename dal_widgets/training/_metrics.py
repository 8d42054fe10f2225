"""Held-out metrics of a model's probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from dal_widgets.training._inference import predict

__all__ = ["evaluate_model", "held_out_metrics"]


def held_out_metrics(probs: np.ndarray, y_eval: np.ndarray, multi_label: bool) -> dict[str, Any]:
    """Metrics of softmax rows, or per-class sigmoids, against the held-out targets.

    Parameters
    ----------
    probs : numpy.ndarray
        (N, C) softmax rows, or per-class sigmoids for multi-label data.
    y_eval : numpy.ndarray
        (N,) class indices, or an (N, C) 0/1 matrix for multi-label data.
    multi_label : bool

    Returns
    -------
    dict
        Single-label: ``accuracy``; ``per_class_accuracy`` (recall of each of the C classes,
        None where the held-out split has no sample of the class) and ``confusion`` (C x C
        ints, rows the true class, columns the predicted one). Multi-label: ``accuracy``
        (micro-F1, with ``metric`` naming it), ``subset_accuracy`` and ``per_class_f1``
        (None where a class is neither present nor predicted). Lists and plain Python
        numbers only, so the result is JSON-ready.
    """
    n = probs.shape[1]
    if multi_label:
        # The learning curve's "accuracy" is micro-F1 for multi-label data.
        pred, true = probs >= 0.5, y_eval.astype(bool)
        tp = (pred & true).sum(0)
        denom = pred.sum(0) + true.sum(0)  # 2 tp + fp + fn per class
        return {
            "accuracy": 2 * float(tp.sum()) / max(float(denom.sum()), 1.0),
            "metric": "micro-F1",
            "subset_accuracy": float((pred == true).all(1).mean()),
            "per_class_f1": [
                None if d == 0 else 2 * t / d for t, d in zip(tp.tolist(), denom.tolist())
            ],
        }
    true_idx = np.asarray(y_eval, dtype=np.int64)
    if true_idx.size and not 0 <= int(true_idx.min()) <= int(true_idx.max()) < n:
        raise ValueError(
            f"The 'y_eval' parameter of held_out_metrics must hold class indices in [0, {n - 1}] "
            f"(probs has {n} columns). Got values in "
            f"[{int(true_idx.min())}, {int(true_idx.max())}] instead."
        )
    pred_idx = probs.argmax(1)
    # One bincount over (true, pred) pairs: row = true class, column = predicted class.
    confusion = np.bincount(true_idx * n + pred_idx, minlength=n * n).reshape(n, n)
    support, correct = confusion.sum(1), np.diag(confusion)
    return {
        "accuracy": float((pred_idx == true_idx).mean()),
        "per_class_accuracy": [
            None if s == 0 else c / s for c, s in zip(correct.tolist(), support.tolist())
        ],
        "confusion": confusion.tolist(),
    }


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
