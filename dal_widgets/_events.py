"""A small event bus: named events, callbacks with keyword payloads, errors kept, never raised.

The session's (and any headless service's) way to tell views what changed. Callbacks may run
on a background thread; one that raises is recorded in ``errors`` and the others still run.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any

from dal_widgets._checks import check_choice

__all__ = ["SESSION_EVENTS", "Events"]


#: Events a session emits, with the keyword arguments observers receive.
SESSION_EVENTS = {
    "labeled": "ids, labels, source",
    "undone": "ids",
    "marked": "ids, field, value",
    "queried": "ids, round, strategy",
    "train_started": "version, n_labels",
    "train_progress": "progress (dict)",
    "trained": "version (ModelVersion)",
    "train_failed": "error (str, with traceback)",
    "train_idle": "(nothing): no fit runs or is queued any more",
    "evaluated": "result (dict)",
    "class_added": "name",
    "map_changed": "projection (Projection)",
    "embedding": "progress (dict): the encoder's embedding job (done, total, rate, eta_s, state)",
}


class Events:
    """Observers of the events named in ``names`` (name -> a description of the payload)."""

    def __init__(self, names: Mapping[str, str], where: str) -> None:
        self.names = names
        self.where = where
        self._observers: dict[str, list[Callable[..., Any]]] = {}
        #: Tracebacks of callbacks that raised.
        self.errors: list[str] = []

    def on(self, event: str, callback: Callable[..., Any]) -> Callable[[], None]:
        """Call ``callback(**payload)`` on ``event``; returns a function that unsubscribes."""
        check_choice(event, "event", self.where, self.names)
        self._observers.setdefault(event, []).append(callback)

        def unsubscribe() -> None:
            try:
                self._observers[event].remove(callback)
            except ValueError:
                pass

        return unsubscribe

    def emit(self, event: str, **payload: Any) -> None:
        for callback in list(self._observers.get(event, ())):
            try:
                callback(**payload)
            except Exception:  # noqa: BLE001 (an observer's bug must not break the emitter)
                self.errors.append(traceback.format_exc())

    def guard(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` (follow-up work of an event); a failure is kept in ``errors``, not raised."""
        try:
            fn()
        except Exception:  # noqa: BLE001 (kept for the views, never raised into the emitter)
            self.errors.append(traceback.format_exc())
