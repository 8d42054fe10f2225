"""The per-round history record: one typed row per round, written by queries, fits and
evaluations, read back as :class:`RoundRecord` (never as a schemaless dict)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from dal_widgets._repr import MISSING, fmt_float, fmt_fraction, fmt_seconds, is_missing

__all__ = ["ROUND_FIELDS", "HistoryRow", "RoundRecord"]


class HistoryRow(dict[str, Any]):
    """One row of ``Session.history``: a plain dict of exact numbers (``accuracy`` is NaN
    before an evaluation) whose repr is rounded, with units and a dash for a missing
    accuracy: ``{'round': 3, 'strategy': 'margin', 'n_labels': 120, 'accuracy': 0.912,
    'train_s': 1.84 s, 'infer_s': 10.3 µs, 'select_s': 2.1 ms}``."""

    __slots__ = ()

    def __repr__(self) -> str:
        parts = []
        for key, value in self.items():
            if key.endswith("_s"):
                text = fmt_seconds(value)
            elif key == "accuracy":
                text = fmt_fraction(value)
            elif isinstance(value, float):
                text = fmt_float(value)
            else:
                text = repr(value)
            parts.append(f"{key!r}: {text}")
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round (a round starts with a query).

    The query sets ``strategy`` (as run: ``"random (cold start for entropy)"`` when a
    cold-start strategy stood in), ``queried``, ``infer_s``, ``select_s``,
    ``n_labels_at_query`` and ``model_version`` (the model it queried with). A fit finished in
    the round sets ``train_s``, ``n_labels`` and ``model_version`` (the new model); an
    evaluation sets ``accuracy``, ``eval_model_version`` and ``eval_n_labels``; a switch to a
    pretrained encoder sets ``encoder``. Fields nothing set are None.
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
    #: The encoder the session switched to in this round (a self-supervised one, once
    #: pretrained): its id.
    encoder: str | None = None

    @property
    def labels_seen(self) -> int | None:
        """Labels behind the round's newest number: those the evaluated model saw, else those
        of the round's fit, else those there were when it queried."""
        for value in (self.eval_n_labels, self.n_labels, self.n_labels_at_query):
            if value is not None:
                return value
        return None

    def __repr__(self) -> str:
        """Only the fields that are set, rounded and with units: ``RoundRecord(round 3,
        margin, 10 queried at 110 labels, infer 10.3 µs, select 2.1 ms, model v4 trained on
        120 labels in 1.84 s, accuracy 0.912 (v4, 120 labels))``."""
        parts = [f"round {self.round}"]
        if self.strategy is not None:
            parts.append(self.strategy)
        if self.queried is not None:
            at = "" if self.n_labels_at_query is None else f" at {self.n_labels_at_query} labels"
            parts.append(f"{self.queried} queried{at}")
        if self.model_version is not None and self.train_s is None:
            parts.append(f"with model v{self.model_version}")
        if self.infer_s is not None:
            parts.append(f"infer {fmt_seconds(self.infer_s)}")
        if self.select_s is not None:
            parts.append(f"select {fmt_seconds(self.select_s)}")
        if self.train_s is not None:
            model = "" if self.model_version is None else f"model v{self.model_version} "
            on = "" if self.n_labels is None else f" on {self.n_labels} labels"
            parts.append(f"{model}trained{on} in {fmt_seconds(self.train_s)}")
        if self.encoder is not None:
            parts.append(f"switched to encoder {self.encoder}")
        if self.eval_model_version is not None or not is_missing(self.accuracy):
            of = [] if self.eval_model_version is None else [f"v{self.eval_model_version}"]
            if self.eval_n_labels is not None:
                of.append(f"{self.eval_n_labels} labels")
            parts.append(
                f"accuracy {fmt_fraction(self.accuracy)}" + (f" ({', '.join(of)})" if of else "")
            )
        else:
            parts.append(f"accuracy {MISSING}")
        return f"RoundRecord({', '.join(parts)})"

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, as a plain dict (JSON in the store)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def history_row(self) -> HistoryRow:
        """The row ``Session.history`` shows: round, strategy, labels, accuracy (NaN before an
        evaluation: the views filter on it), seconds. A dict with a readable repr."""
        return HistoryRow(
            {
                "round": self.round,
                "strategy": self.strategy,
                "n_labels": self.labels_seen,
                "accuracy": math.nan if self.accuracy is None else self.accuracy,
                "train_s": self.train_s or 0.0,
                "infer_s": self.infer_s or 0.0,
                "select_s": self.select_s or 0.0,
            }
        )


#: The names a round row may hold.
ROUND_FIELDS = frozenset(f.name for f in fields(RoundRecord))
