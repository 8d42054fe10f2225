"""The in-cell labeling widget: keyboard-first, model-assisted, never loses a label.

A thin view over a :class:`~dal_widgets.Session`: every action goes through the session (and so
through the durable store), and a tile turns "done" only after the store committed. Every UI
action has a public Python method, which is how the tests drive it without a browser.
"""

from __future__ import annotations

import base64
import collections
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from dal_widgets._checks import check_choice, check_int, param_error, short_repr
from dal_widgets._threads import start_daemon

__all__ = ["LabelingWidget", "register_renderer"]

_HERE = Path(__file__).parent

# kind -> renderer(dataset, sample_id) -> payload {"type": "image"|"text"|"table", ...}
_RENDERERS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {}


def register_renderer(kind: str, renderer: Callable[[Any, Any], dict[str, Any]]) -> None:
    """Teach the labeler to show samples of a dataset kind.

    ``renderer(dataset, sample_id)`` returns one of ``{"type": "image", "png": bytes}``,
    ``{"type": "text", "text": str}`` or ``{"type": "table", "row": {column: value}}``. The view
    shows all of them as data (images as images, everything else through ``textContent``), so a
    renderer cannot inject markup.
    """
    if not isinstance(kind, str) or not kind:
        raise param_error("kind", "register_renderer", "a non-empty str", kind, TypeError)
    if not callable(renderer):
        raise param_error(
            "renderer", "register_renderer", "a callable(dataset, sample_id)", renderer, TypeError
        )
    _RENDERERS[kind] = renderer


register_renderer("image", lambda ds, sid: {"type": "image", "png": ds.render(sid)})
register_renderer("text", lambda ds, sid: {"type": "text", "text": ds.render(sid)})
register_renderer("tabular", lambda ds, sid: {"type": "table", "row": ds.render(sid)})


def _payload(dataset: Any, sample_id: Any) -> dict[str, Any]:
    renderer = _RENDERERS.get(dataset.kind)
    if renderer is None:
        raise KeyError(
            f"No renderer for dataset kind {dataset.kind!r}; add one with register_renderer()."
        )
    out = dict(renderer(dataset, sample_id))
    if out.get("type") == "image":
        out["src"] = "data:image/png;base64," + base64.b64encode(out.pop("png")).decode("ascii")
    return out


class LabelingWidget(anywidget.AnyWidget):
    """Label the session's query batches in the notebook cell.

    Keys (click the widget first; Esc leaves): each class has a key, shown on its button (the
    class name itself when every name is one character, as for digits; else 1-9 and 0 for the
    first ten classes and a type-ahead box for the rest, opened with /), Enter or Space
    accepts the model's suggestion, arrows move, Backspace undoes, S skips, F flags, V toggles
    grid / single view, Z shows a larger image, N fetches the next batch, / opens the type-ahead
    box (for more than 10 classes), ? shows the cheat sheet.

    Parameters
    ----------
    session : Session
    batch_size : int
        Samples per query batch.
    budget : int, optional
        Shown as labeled / budget.
    start : bool
        Query the first batch at once (else call :meth:`next_batch`).
    prefetch : bool
        Query the next batch in a background thread when the current one is nearly done, so
        finishing a batch shows the next at once.

    Notes
    -----
    Public methods mirror the UI: :meth:`label`, :meth:`accept_suggestion`, :meth:`skip`,
    :meth:`flag`, :meth:`undo`, :meth:`next_batch`, :meth:`move`, :meth:`select`,
    :meth:`toggle_view`, :meth:`add_class`, :meth:`zoom`.
    """

    _esm = _HERE / "labeler.js"
    _css = _HERE / "labeler.css"

    classes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    items = traitlets.List(traitlets.Dict()).tag(sync=True)
    states = traitlets.Dict().tag(sync=True)
    cursor = traitlets.Int(0).tag(sync=True)
    view = traitlets.Unicode("grid").tag(sync=True)
    progress = traitlets.Dict().tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    loading = traitlets.Bool(False).tag(sync=True)
    zoomed = traitlets.Dict().tag(sync=True)
    ack = traitlets.Int(0).tag(sync=True)  # the last frontend message handled (its seq)
    multi_label = traitlets.Bool(False).tag(sync=True)

    def __init__(
        self,
        session: Any,
        *,
        batch_size: int = 10,
        budget: int | None = None,
        start: bool = True,
        prefetch: bool = True,
        **kwargs: Any,
    ) -> None:
        from dal_widgets.session import Session

        if not isinstance(session, Session):
            raise param_error(
                "session", "LabelingWidget", "a dal_widgets.Session", session, TypeError
            )
        batch_size = check_int(batch_size, "batch_size", "LabelingWidget", lo=1, hi=500)
        budget = None if budget is None else check_int(budget, "budget", "LabelingWidget", lo=1)
        super().__init__(**kwargs)
        self.session = session
        self.batch_size = batch_size
        self.budget = budget
        self.prefetch = bool(prefetch)
        self.errors: list[str] = []  # tracebacks of failed actions, newest last
        self._keys: dict[str, Any] = {}  # str(id) -> sample id, for the ids on screen
        self._next: list[Any] | None = None
        self._fetching: threading.Thread | None = None
        self._acting: int | None = None  # the thread running one of this widget's actions
        self._lock = threading.RLock()
        self._times: collections.deque[float] = collections.deque(maxlen=200)
        self.classes = list(session.classes)
        self.multi_label = session.multi_label
        self.on_msg(self._on_frontend_msg)
        self._unsubscribe = [
            session.on("trained", lambda **kw: self._refresh_progress()),
            session.on("train_started", lambda **kw: self._refresh_progress()),
            session.on("train_failed", lambda **kw: self._refresh_progress()),
            session.on("class_added", lambda **kw: self._set_classes()),
            # labels given elsewhere (code, another view) show on the tiles too
            session.on("labeled", lambda ids, **kw: self._external(ids)),
            session.on("undone", lambda ids: self._external(ids)),
            session.on("marked", lambda ids, **kw: self._external(ids)),
        ]
        self._refresh_progress()
        if start:
            resume = session.pending
            if resume:  # a restarted kernel shows the unfinished batch again
                self._show(resume)
            else:
                self.next_batch()

    @property
    def batch_ids(self) -> list[Any]:
        """The ids on screen, in order."""
        return [self._keys[it["key"]] for it in self.items]

    @property
    def current_id(self) -> Any:
        """The id of the sample under the cursor (None when nothing is on screen)."""
        if not self.items:
            return None
        return self._keys.get(self.items[min(self.cursor, len(self.items) - 1)]["key"])

    @property
    def prefetched(self) -> list[Any] | None:
        """The next batch, queried in the background while this one is labeled (None until
        it is ready)."""
        with self._lock:
            return None if self._next is None else list(self._next)

    def wait_prefetch(self, timeout: float | None = None) -> bool:
        """Block until a background query of the next batch is done; False on timeout."""
        fetching = self._fetching
        if fetching is not None:
            fetching.join(timeout)
            return not fetching.is_alive()
        return True

    def drop_prefetched(self) -> None:
        """Forget the prefetched batch (the strategy changed): the next one is queried anew."""
        with self._lock:
            self._next = None

    def receive(self, message: Any, buffers: Any = None) -> None:
        """Act on a message as the browser sends it (``{"action": ..., "seq": ...}``); what
        the labeler's JavaScript calls, also for driving the widget from Python."""
        self._on_frontend_msg(self, message, buffers)

    # ------------------------------------------------------------------ helpers
    def _key(self, sample_id: Any) -> str:
        return str(sample_id)

    def _resolve(self, sample_id: Any, where: str) -> Any:
        """The sample id to act on: the given one, or the one under the cursor."""
        if sample_id is None:
            if not self.items:
                raise ValueError(f"{where}: there is no sample on screen; call next_batch() first.")
            return self._keys[self.items[self.cursor]["key"]]
        key = self._key(sample_id)
        if key in self._keys:
            return self._keys[key]
        self.session.dataset.positions([sample_id], where=where)  # KeyError for unknown ids
        return self.session.dataset.python_id(sample_id)

    def _set_state(self, ids: list[Any]) -> None:
        """Read the committed status of ids from the session and publish it."""
        labels = self.session.labels
        skipped = self.session.store.marked("skip")
        flagged = self.session.store.marked("flag")
        states = dict(self.states)
        for sid in ids:
            key = self._key(sid)
            if key not in self._keys:
                continue
            status = "done" if sid in labels else "skipped" if sid in skipped else "pending"
            states[key] = {"status": status, "label": labels.get(sid), "flagged": sid in flagged}
        self.states = states

    def _refresh_progress(self) -> None:
        s = self.session
        now = time.time()
        recent = [t for t in self._times if now - t <= 300]
        per_minute = 0.0
        if len(recent) >= 2:
            # at least a 30 s window, so a burst of fast key presses does not read as thousands
            per_minute = 60.0 * len(recent) / max(now - recent[0], 30.0)
        version = s.model_version
        self.progress = {
            "labeled": len(s.store),
            "budget": self.budget,
            "per_minute": round(per_minute, 1),
            "model_version": None if version is None else version.version,
            "staleness": s.staleness,
            "training": s.training,
            "train_error": s.train_error is not None,
            "round": s.round,
            "strategy": s.strategy,
        }

    def _set_classes(self) -> None:
        self.classes = list(self.session.classes)

    def _advance(self) -> None:
        """Move the cursor to the next pending sample; show the next batch when none is left."""
        keys = [it["key"] for it in self.items]
        pending = [
            i for i, k in enumerate(keys) if self.states.get(k, {}).get("status") == "pending"
        ]
        if not pending:
            self.next_batch()
            return
        after = [i for i in pending if i > self.cursor]
        self.cursor = after[0] if after else pending[0]
        if self.prefetch and len(pending) <= max(1, len(keys) // 5):
            self._start_prefetch()

    def _external(self, ids: list[Any]) -> None:
        if self._acting == threading.get_ident():
            return  # the echo of this widget's own action, which redraws itself once
        if any(self._key(i) in self._keys for i in ids):
            self._set_state(ids)
        self._refresh_progress()

    def _advance_from(self, sample_id: Any) -> None:
        """After an action on the sample under the cursor, move on (or to the next batch)."""
        if self.items and self.items[self.cursor]["key"] == self._key(sample_id):
            self._advance()

    def _record(self, ids: list[Any]) -> None:
        now = time.time()
        self._times.extend([now] * len(ids))
        self._set_state(ids)
        self._refresh_progress()

    def _guard(self, action: Callable[[], Any]) -> Any:
        """Run a UI action; a failure shows in the widget (escaped) and is kept in ``errors``."""
        outer = self._acting
        self._acting = threading.get_ident()
        try:
            result = action()
        except Exception as exc:  # shown to the user, then re-raised
            self.errors.append(traceback.format_exc())
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._acting = outer
        self.error = ""
        return result

    # ------------------------------------------------------------------ batches
    def _show(self, ids: list[Any]) -> None:
        """Replace the items on screen with ``ids`` (rendered, with the model's suggestions)."""
        ds = self.session.dataset
        explain = {r["id"]: r for r in self.session.explain(ids)} if ids else {}
        items: list[dict[str, Any]] = []
        keys = {}
        for sid in ids:
            key = self._key(sid)
            keys[key] = sid
            why = explain.get(sid, {})
            items.append(
                {
                    "key": key,
                    "sample": _payload(ds, sid),
                    "suggestion": why.get("predicted"),
                    "prob": why.get("prob"),
                    "probs": why.get("probs"),
                    "score": why.get("score"),
                    "rank": why.get("rank"),
                    "candidates": why.get("candidates"),
                    "strategy": why.get("strategy"),
                }
            )
        with self.hold_sync():
            self._keys = keys
            self.states = {}
            self.items = items
            self.cursor = 0
            self._set_state(ids)
            self.zoomed = {}
            self._refresh_progress()
            first = next(
                (i for i, it in enumerate(items) if self.states[it["key"]]["status"] == "pending"),
                0,
            )
            self.cursor = first

    def _start_prefetch(self) -> None:
        with self._lock:
            if self._next is not None or (self._fetching is not None and self._fetching.is_alive()):
                return
            on_screen = list(self._keys.values())
            self._fetching = start_daemon(
                lambda: self._prefetch(on_screen),
                name="dal-labeler-prefetch",
                on_error=self._prefetch_failed,
            )

    def _prefetch(self, on_screen: list[Any]) -> None:
        left = (
            len(self.session.dataset)
            - len(self.session.store)
            - len(self.session.store.marked("skip"))
        )
        exclude = [i for i in on_screen if i not in self.session.labels]
        n = min(self.batch_size, left - len(exclude))
        if n > 0:
            ids = self.session.query(n, exclude=exclude)
            with self._lock:
                self._next = ids

    def _prefetch_failed(self, _exc: BaseException, text: str) -> None:
        self.errors.append(text)
        self.error = "Fetching the next batch failed; press N to retry."

    def next_batch(self) -> list[Any]:
        """Show the next batch: the prefetched one if ready, else query now. Returns its ids."""

        def action() -> list[Any]:
            fetching = self._fetching
            if fetching is not None and fetching.is_alive():
                self.loading = True
                fetching.join()
            with self._lock:
                ids, self._next = self._next, None
            ids = [i for i in (ids or []) if i not in self.session.labels]
            if not ids:
                left = (
                    len(self.session.dataset)
                    - len(self.session.store)
                    - len(self.session.store.marked("skip"))
                )
                if left <= 0:
                    self._show([])
                    self.message = "Every sample is labeled or skipped."
                    return []
                self.loading = True
                ids = self.session.query(min(self.batch_size, left))
            self._show(ids)
            self.message = f"Round {self.session.round}: {len(ids)} samples picked by {self.items[0]['strategy'] if self.items else self.session.strategy}."
            return ids

        try:
            return self._guard(action)
        finally:
            self.loading = False

    # ------------------------------------------------------------------ actions
    def label(self, label: Any, *, sample_id: Any = None) -> None:
        """Label the sample under the cursor (or ``sample_id``) with a class name or index
        (multi-label sessions: a collection of them; an empty one means none of the classes).

        The label is committed to the store before the tile turns "done"; the cursor moves
        on to the next pending sample.
        """

        def action() -> None:
            sid = self._resolve(sample_id, "LabelingWidget.label")
            self.session.label([sid], label)
            self._record([sid])
            self._advance_from(sid)

        self._guard(action)

    def accept_suggestion(self, *, sample_id: Any = None) -> None:
        """Label with the model's suggestion (recorded with source "suggestion")."""

        def action() -> None:
            sid = self._resolve(sample_id, "LabelingWidget.accept_suggestion")
            item = next((it for it in self.items if it["key"] == self._key(sid)), None)
            if item is None or item.get("suggestion") is None:  # (an empty set is a suggestion)
                raise ValueError(
                    "There is no model suggestion for this sample yet (no model trained)."
                )
            self.session.label([sid], item["suggestion"], source="suggestion")
            self._record([sid])
            self._advance_from(sid)

        self._guard(action)

    def skip(self, *, sample_id: Any = None) -> None:
        """Skip the sample (it will not be offered again; undoable)."""

        def action() -> None:
            sid = self._resolve(sample_id, "LabelingWidget.skip")
            self.session.skip([sid])
            self._record([sid])
            self._advance_from(sid)

        self._guard(action)

    def flag(self, *, sample_id: Any = None) -> None:
        """Toggle the review flag of the sample (undoable)."""

        def action() -> None:
            sid = self._resolve(sample_id, "LabelingWidget.flag")
            self.session.flag([sid], sid not in self.session.store.marked("flag"))
            self._set_state([sid])

        self._guard(action)

    def undo(self) -> list[Any] | None:
        """Undo the newest action. Undone samples not on screen are brought back into view."""

        def action() -> list[Any] | None:
            ids = self.session.undo()
            if not ids:
                self.message = "Nothing to undo."
                return ids
            missing = [i for i in ids if self._key(i) not in self._keys]
            if missing:
                current = list(self._keys.values())
                self._show(missing + current)
            self._set_state(ids)
            self._refresh_progress()
            keys = [it["key"] for it in self.items]
            self.cursor = keys.index(self._key(ids[0]))
            self.message = f"Undid {len(ids)} sample(s)."
            return ids

        return self._guard(action)

    def move(self, delta: int) -> None:
        """Move the cursor by ``delta`` samples (clamped to the batch)."""
        delta = check_int(delta, "delta", "LabelingWidget.move")
        if self.items:
            self.cursor = max(0, min(len(self.items) - 1, self.cursor + delta))

    def select(self, sample_id: Any) -> None:
        """Put the cursor on a sample of the batch."""
        key = self._key(sample_id)
        keys = [it["key"] for it in self.items]
        if key not in keys:
            raise KeyError(
                f"LabelingWidget.select: sample {short_repr(sample_id)} is not on screen."
            )
        self.cursor = keys.index(key)

    def toggle_view(self, view: str | None = None) -> None:
        """Switch between the gallery grid and one sample at a time."""
        if view is None:
            view = "single" if self.view == "grid" else "grid"
        self.view = check_choice(view, "view", "LabelingWidget.toggle_view", ["grid", "single"])

    def add_class(self, name: str) -> None:
        """Add a class to the session (it gets the next key)."""
        self._guard(lambda: self.session.add_class(name))

    def show(self, ids: Any) -> None:
        """Show specific samples (e.g. a selection from the map) instead of the query batch."""
        self._guard(lambda: self._show(self.session.sample_ids(ids, where="LabelingWidget.show")))

    def zoom(self, *, sample_id: Any = None, size: int = 320) -> None:
        """Show a larger view of an image sample (rendered from the original on demand)."""

        def action() -> None:
            sid = self._resolve(sample_id, "LabelingWidget.zoom")
            payload = (
                _payload(self.session.dataset, sid)
                if self.session.dataset.kind != "image"
                else {
                    "type": "image",
                    "src": "data:image/png;base64,"
                    + base64.b64encode(self.session.dataset.render(sid, size=size)).decode("ascii"),
                }
            )
            self.zoomed = {"key": self._key(sid), "sample": payload}

        self._guard(action)

    def close(self) -> None:
        for unsubscribe in getattr(self, "_unsubscribe", ()):
            unsubscribe()
        super().close()

    # ------------------------------------------------------------------ frontend messages
    _ACTIONS = (
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
    )

    def _on_frontend_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """Dispatch a message from the browser to the public method of the same action."""
        if not isinstance(content, dict) or content.get("action") not in self._ACTIONS:
            return
        action = content["action"]
        key = content.get("key")
        sid = self._keys.get(key) if key is not None else None
        try:
            if action == "label":
                self.label(content.get("label"), sample_id=sid)
            elif action == "accept":
                self.accept_suggestion(sample_id=sid)
            elif action == "skip":
                self.skip(sample_id=sid)
            elif action == "flag":
                self.flag(sample_id=sid)
            elif action == "undo":
                self.undo()
            elif action == "next":
                self.next_batch()
            elif action == "move":
                self.move(int(content.get("delta", 0)))
            elif action == "select" and sid is not None:
                self.select(sid)
            elif action == "view":
                self.toggle_view(content.get("view"))
            elif action == "zoom":
                self.zoom(sample_id=sid)
            elif action == "add_class":
                self.add_class(str(content.get("name", "")))
        except Exception:  # noqa: BLE001 (already shown in the widget and kept in errors)
            if not self.error:
                self.errors.append(traceback.format_exc())
                self.error = traceback.format_exc().strip().splitlines()[-1]
        finally:
            seq = content.get("seq")
            if isinstance(seq, int):
                self.ack = seq
