"""The labeler's prefetch: the next query batch, picked on a background thread while the
person labels this one, so finishing a batch shows the next at once.

A :class:`Prefetcher` owns its thread and the batch it picked (with the model version it was
picked with); a failure goes to ``on_error``, never to the console.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dal_widgets._threads import joined, start_daemon

__all__ = ["REQUERY_POOL", "Prefetcher", "unlabeled_left"]

#: Pools up to this size are queried again when a newer model arrived since a prefetch.
REQUERY_POOL = 20_000


def unlabeled_left(session: Any) -> int:
    """How many samples are neither labeled nor skipped (in a team: still need a label)."""
    return int(session.remaining)


class Prefetcher:
    """Picks the next batch of ``session`` in the background, one query at a time."""

    def __init__(self, session: Any, on_error: Callable[[Exception, str], Any]) -> None:
        self.session = session
        self.on_error = on_error
        self._lock = threading.Lock()
        self._ids: list[Any] | None = None
        self._version: Any = None  # the model version the batch was picked with
        self._thread: threading.Thread | None = None

    @property
    def ids(self) -> list[Any] | None:
        """The batch picked (None until one is ready)."""
        with self._lock:
            return None if self._ids is None else list(self._ids)

    @property
    def running(self) -> bool:
        """Whether a query is under way."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the query under way is done; False on timeout."""
        return joined(self._thread, timeout)

    def drop(self) -> None:
        """Forget the batch picked: the next one is queried anew."""
        with self._lock:
            self._ids = None

    def start(self, on_screen: list[Any], size: int) -> None:
        """Pick up to ``size`` samples, none of ``on_screen`` still unlabeled; nothing happens
        while a batch is ready or a query is under way."""
        with self._lock:
            if self._ids is not None or self.running:
                return
            self._thread = start_daemon(
                lambda: self._fetch(on_screen, size),
                name="dal-labeler-prefetch",
                on_error=self.on_error,
            )

    def _fetch(self, on_screen: list[Any], size: int) -> None:
        s = self.session
        left = unlabeled_left(s)
        exclude = [i for i in on_screen if i not in s.labels]
        n = min(size, left - len(exclude))
        if n > 0:
            version = s.model_version
            ids = s.query(n, exclude=exclude)
            with self._lock:
                self._ids, self._version = ids, version

    def take(self) -> list[Any]:
        """The batch picked, less the samples labeled since, and forget it. Empty when none is
        ready, or when a newer model came and a new query costs little."""
        with self._lock:
            ids, self._ids = self._ids, None
            version = self._version
        s = self.session
        ids = [i for i in (ids or []) if i not in s.labels]
        if ids and version != s.model_version and self._cheap():
            return []  # picked before the newest model: pick again with it
        return ids

    def _cheap(self) -> bool:
        """Whether a query now costs little: the newest model's pool arrays are there already,
        or the pool is small (a pass over it takes well under a second)."""
        s = self.session
        return s.arrays.cached_version == s.model_version or len(s.dataset) <= REQUERY_POOL
