"""What the plain views (App, EmbeddingPlot, CompareWidget) share.

Each is a Python object with a root ipywidgets ``widget`` (displayed through it), keeps the
tracebacks of its failed updates in ``errors`` and shows the last one in its own place, and
drops its session subscriptions on :meth:`View.close`. A failing update never raises into the
event loop or a background thread, and never stops the other views.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["View"]


class View:
    """Base of the plain views; subclasses set ``widget`` and draw errors in ``_show_error``."""

    widget: Any

    def __init__(self) -> None:
        #: Tracebacks of failed updates and actions, newest last.
        self.errors: list[str] = []
        self._unsubscribe: list[Callable[[], None]] = []

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _safe(self, fn: Callable[[], Any]) -> Any:
        """Run a view update or action; a failure is kept and shown, never raised."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 (views must not break the session or other views)
            self.errors.append(traceback.format_exc())
            self._show_error(exc)
            return None

    def _show_error(self, exc: Exception) -> None:
        """Draw the error where this view shows errors."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop following the session and close the widget."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.widget.close()
