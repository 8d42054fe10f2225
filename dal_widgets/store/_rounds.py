"""The per-round history record: one typed row per round, written by queries, fits and
evaluations, read back as :class:`RoundRecord` (never as a schemaless dict)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ROUND_FIELDS", "RoundRecord"]


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round (a round starts with a query).

    The query sets ``strategy`` (as run: ``"random (cold start for entropy)"`` when a
    cold-start strategy stood in), ``queried``, ``infer_s``, ``select_s``,
    ``n_labels_at_query`` and ``model_version`` (the model it queried with). A fit finished in
    the round sets ``train_s``, ``n_labels`` and ``model_version`` (the new model); an
    evaluation sets ``accuracy``, ``eval_model_version`` and ``eval_n_labels``. Fields nothing
    set are None.
    """

    round: int
    strategy: str | None = None
    queried: int | None = None
    infer_s: float | None = None
    select_s: float | None = None
    n_labels_at_query: int | None = None
    model_version: int | None = None
    train_s: float | None = None
    n_labels: int | None = None
    accuracy: float | None = None
    eval_model_version: int | None = None
    eval_n_labels: int | None = None

    @property
    def labels_seen(self) -> int | None:
        """Labels behind the round's newest number: those the evaluated model saw, else those
        of the round's fit, else those there were when it queried."""
        for value in (self.eval_n_labels, self.n_labels, self.n_labels_at_query):
            if value is not None:
                return value
        return None

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, as a plain dict (JSON in the store)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def history_row(self) -> dict[str, Any]:
        """The row ``Session.history`` shows: round, strategy, labels, accuracy, seconds."""
        return {
            "round": self.round,
            "strategy": self.strategy,
            "n_labels": self.labels_seen,
            "accuracy": math.nan if self.accuracy is None else self.accuracy,
            "train_s": self.train_s or 0.0,
            "infer_s": self.infer_s or 0.0,
            "select_s": self.select_s or 0.0,
        }


#: The names a round row may hold.
ROUND_FIELDS = frozenset(f.name for f in fields(RoundRecord))
