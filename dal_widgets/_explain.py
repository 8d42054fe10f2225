"""Why this sample: what the query that picked each sample knew, and what the model thinks.

:class:`PickNotes` keeps, per picked sample, the strategy, round, score and rank among the
candidates (bounded: the newest 10,000 picks); :func:`suggestion` turns one row of class
probabilities into the suggestion a labeler shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PickNotes", "suggestion"]

_KEYS = ("strategy", "round", "score", "rank", "candidates")


class PickNotes:
    """Score and rank of each pick among the candidates of its query."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._notes: dict[Any, dict[str, Any]] = {}

    def remember(
        self,
        ids: list[Any],
        picks: np.ndarray,
        scores: np.ndarray | None,
        mask: np.ndarray,
        strategy: str,
        rnd: int,
    ) -> None:
        """Note a query's picks (``scores`` over the whole pool, None for batch strategies)."""
        candidates = int((~mask).sum())
        if scores is None:
            ranks = np.arange(1, len(ids) + 1)
            values: list[float | None] = [None] * len(ids)
        else:
            ordered = np.sort(scores[~mask])  # ascending
            # rank 1 = highest score; ties share the best rank
            ranks = candidates - np.searchsorted(ordered, scores[picks], side="right") + 1
            values = [float(v) for v in scores[picks]]
        if len(self._notes) > self.limit:
            self._notes.clear()
        for i, sid in enumerate(ids):
            self._notes[sid] = {
                "strategy": strategy,
                "round": rnd,
                "score": values[i],
                "rank": int(ranks[i]),
                "candidates": candidates,
            }

    def get(self, sample_id: Any) -> dict[str, Any]:
        """The note of a pick (every key None when the sample was not picked by a query)."""
        return self._notes.get(sample_id, dict.fromkeys(_KEYS))

    def clear(self) -> None:
        self._notes.clear()


def suggestion(probs: np.ndarray | None, classes: list[str], multi_label: bool) -> dict[str, Any]:
    """``probs``, ``predicted`` and ``prob`` for one sample's probabilities (all None without).

    Multi-label: the suggestion is the set of classes at or above 0.5, and ``prob`` how sure
    the model is of the whole set (the least certain class decides).
    """
    if probs is None:
        return {"probs": None, "predicted": None, "prob": None}
    values = [float(v) for v in probs]
    if multi_label:
        chosen = [c for c, v in zip(classes, values) if v >= 0.5]
        sure = float(np.where(probs >= 0.5, probs, 1.0 - probs).min())
        return {"probs": values, "predicted": chosen, "prob": sure}
    top = int(np.argmax(probs))
    return {"probs": values, "predicted": classes[top], "prob": values[top]}
