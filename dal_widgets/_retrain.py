"""When a session trains by itself: after each query batch, every k labels, or only on request."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dal_widgets._checks import check_choice, check_int

__all__ = ["FIRST_FIT_LABELS", "RetrainPolicy"]

#: The first model is fitted as soon as this many labels of at least two classes exist.
FIRST_FIT_LABELS = 5


class RetrainPolicy:
    """Decides, after each label action, whether a fit is due.

    ``"batch"``: when every sample of a query batch is labeled or skipped (the newest four
    batches are watched); ``"label"`` (also spelled ``"every label"``): after every label
    action (fits coalesce: labels given while one runs are served by one more fit after it);
    an int k: after every k new labels; ``"manual"``: never by itself.
    Before the first model, ``"batch"`` and k also fit once :data:`FIRST_FIT_LABELS` labels of
    two classes exist, so the rest of the first batch already gets suggestions.
    """

    def __init__(self, value: str | int, where: str = "Session") -> None:
        self.where = where
        self.value = value  # validated by the setter
        self._batches: list[set[Any]] = []
        self._new = 0

    @property
    def value(self) -> str | int:
        return self._value

    @value.setter
    def value(self, value: str | int) -> None:
        if isinstance(value, str):
            value = "label" if value == "every label" else value
            check_choice(value, "retrain", self.where, ["batch", "label", "manual"])
        else:
            check_int(value, "retrain", self.where, lo=1)
        self._value = value

    def watch(self, ids: Iterable[Any]) -> None:
        """A query batch was shown: a fit is due once all of it is done."""
        self._batches = [*self._batches[-3:], set(ids)]

    def due(self, n_new: int, done: set[Any]) -> bool:
        """``n_new`` more samples were labeled or skipped; ``done`` is every such id now."""
        self._new += n_new
        due = False
        if self._value == "batch":
            finished = [b for b in self._batches if b <= done]
            if finished:
                self._batches = [b for b in self._batches if not b <= done]
                due = True
        elif self._value == "label":
            due = n_new > 0
        elif isinstance(self._value, int):
            due = self._new >= self._value
        if due:
            self._new = 0
        return due

    def after(self, n_new: int, labels: dict[Any, Any], skipped: set[Any], first: bool) -> bool:
        """Whether a fit is due after ``n_new`` more labels or skips (``first``: no model
        exists or is being fitted). The first model waits for :meth:`first_fit_due` with every
        policy but ``"manual"``, even ``"label"``: one class is nothing to learn from."""
        due = self.due(n_new, set(labels) | skipped)
        if first and self._value == "label":
            due = False
        return due or (first and self.first_fit_due(labels))

    def first_fit_due(self, labels: dict[Any, Any]) -> bool:
        """Whether the first model may be fitted now (the caller knows there is none yet)."""
        if self._value == "manual" or len(labels) < FIRST_FIT_LABELS:
            return False
        values = iter(labels.values())
        first = next(values)
        return any(v != first for v in values)
