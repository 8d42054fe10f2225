"""The labeler's browser messages: each action the JavaScript sends maps to one public method.

``labeler.js`` sends ``{"action": ..., "seq": ..., "key": ...}``; :func:`dispatch` calls the
:class:`~dal_widgets.widgets.LabelingWidget` method of that action, so everything the browser
does, Python code can do too. The widget acknowledges each message (its ``seq``) after it.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dal_widgets.widgets.labeler import LabelingWidget

__all__ = ["ACTIONS", "dispatch", "handle"]

ACTIONS = (
    "label",
    "accept",
    "skip",
    "flag",
    "undo",
    "next",
    "move",
    "select",
    "view",
    "zoom",
    "add_class",
    "accept_page",
    "page",
    "end_review",
)


def handle(widget: LabelingWidget, content: Any, on_screen: dict[str, Any]) -> None:
    """Act on one message from the browser, then acknowledge it (``widget.ack = seq``).

    Messages of unknown actions are ignored. A failing action already shows in the widget (its
    ``error``) and is kept in ``widget.errors``; it never raises into the comm.
    """
    if not isinstance(content, dict) or content.get("action") not in ACTIONS:
        return
    key = content.get("key")
    sid = on_screen.get(key) if key is not None else None
    try:
        dispatch(widget, content, sid, on_screen)
    except Exception:  # noqa: BLE001 (already shown in the widget and kept in errors)
        if not widget.error:
            widget.errors.append(traceback.format_exc())
            widget.error = traceback.format_exc().strip().splitlines()[-1]
    finally:
        seq = content.get("seq")
        if isinstance(seq, int):
            widget.ack = seq


def dispatch(
    widget: LabelingWidget, content: dict[str, Any], sid: Any, on_screen: dict[str, Any]
) -> None:
    """Call the method of ``content["action"]`` (one of :data:`ACTIONS`).

    ``sid`` is the sample of the message's tile (None: the one under the cursor), and
    ``on_screen`` maps the tiles' keys to their sample ids.
    """
    action = content["action"]
    if action == "label":
        widget.label(content.get("label"), sample_id=sid)
    elif action == "accept":
        widget.accept_suggestion(sample_id=sid)
    elif action == "skip":
        widget.skip(sample_id=sid)
    elif action == "flag":
        widget.flag(sample_id=sid)
    elif action == "undo":
        widget.undo()
    elif action == "next":  # N: the review's next page, else the next batch
        if widget.reviewing is not None:
            widget.next_page()
        else:
            widget.next_batch()
    elif action == "move":
        widget.move(int(content.get("delta", 0)))
    elif action == "select" and sid is not None:
        widget.select(sid)
    elif action == "view":
        widget.toggle_view(content.get("view"))
    elif action == "zoom":
        widget.zoom(sample_id=sid)
    elif action == "add_class":
        widget.add_class(str(content.get("name", "")))
    elif action == "accept_page":
        keys = content.get("keys")
        if isinstance(keys, list):  # the tiles the person saw; gone ones are left out
            seen = [on_screen[k] for k in keys if isinstance(k, str) and k in on_screen]
            widget.accept_page(sample_ids=seen)
        else:
            widget.accept_page()
    elif action == "page" and widget.reviewing is not None:
        delta = int(content.get("delta", 0))
        if delta > 0:
            widget.next_page()
        elif delta < 0:
            widget.previous_page()
    elif action == "end_review":
        widget.end_review()
