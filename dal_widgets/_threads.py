"""Background threads, one way: named daemon threads whose failures never print.

A thread in a notebook kernel must not print or display: an exception that escapes it would
land in whichever cell happens to run. :func:`start_daemon` runs ``target`` in a named daemon
thread and hands any exception, with its traceback, to ``on_error``, which stores it where a
view shows it (a widget's ``errors``, a service's ``error``).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["joined", "start_daemon"]


def start_daemon(
    target: Callable[[], Any],
    *,
    name: str,
    on_error: Callable[[Exception, str], Any],
) -> threading.Thread:
    """Start ``target()`` in a daemon thread called ``name``; an exception goes to
    ``on_error(exception, traceback_text)`` instead of the console."""

    def run() -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001 (handed to on_error: a thread must not print)
            try:
                on_error(exc, traceback.format_exc())
            except Exception:  # noqa: BLE001 (on_error's own bug: nowhere left to show it)
                pass

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def joined(thread: threading.Thread | None, timeout: float | None = None) -> bool:
    """Wait up to ``timeout`` seconds for ``thread`` (None: nothing runs); whether it ended."""
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()
