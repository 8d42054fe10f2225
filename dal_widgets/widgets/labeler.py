"""The in-cell labeling widget: keyboard-first, model-assisted, never loses a label.

A thin view over a :class:`~dal_widgets.Session`: every action goes through the session (and so
through the durable store), and a tile turns "done" only after the store committed. Every UI
action has a public Python method, which is how the tests drive it without a browser.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
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


#: Pools up to this size are queried again when a newer model arrived since a prefetch.
_REQUERY_POOL = 20_000


def _why(explained: dict[str, Any]) -> dict[str, Any]:
    """A tile's suggestion and "why this sample" fields, from one ``Session.explain`` row."""
    fields = ("probs", "prob", "score", "rank", "candidates", "strategy")
    return {"suggestion": explained.get("predicted"), **{k: explained.get(k) for k in fields}}


@dataclasses.dataclass
class _Review:
    """An open review: samples in review order, shown ``size`` tiles a page."""

    ids: list[Any]
    title: str  # e.g. "from the map"; untrusted text, the view shows it through textContent
    how: str  # how the samples are ordered, for the message
    size: int
    relabel: bool  # of labeled samples: the cursor walks every tile, not only pending ones
    token: int  # one per review opened, so the view takes the keyboard focus once
    page: int = 0

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.ids) // self.size))

    def page_ids(self) -> list[Any]:
        return self.ids[self.page * self.size : (self.page + 1) * self.size]

    def page_of(self, sample_id: Any) -> int | None:
        try:
            return self.ids.index(sample_id) // self.size
        except ValueError:
            return None


def _review_order(probs: np.ndarray | None, groups: np.ndarray) -> np.ndarray:
    """Positions in review order: by group (ascending), then least sure first (``probs`` is
    the model's confidence in each sample's group; None keeps the given order in a group)."""
    if probs is None:
        return np.argsort(groups, kind="stable")
    return np.lexsort((probs, groups))  # stable: ties keep the given order


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
    accepts the model's suggestion, Shift+Enter accepts every suggestion on the page,
    arrows move, Backspace undoes, S skips, F flags, V toggles grid / single view, Z shows a
    larger image, N fetches the next batch (in a review: the next page; PageDown too),
    P or PageUp the previous page, B goes back from a review to the batch, / opens the
    type-ahead box (for more than 10 classes), ? shows the cheat sheet. (P and B are class keys
    instead when a class is named "p" or "b"; the buttons and PageUp still work then.)

    A review (:meth:`review`, :meth:`review_labeled`, the map's "Label these") shows chosen
    samples a page of ``batch_size`` tiles at a time, grouped by the model's suggestion (or
    the label) and least sure first; the query batch comes back when it ends.

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
    Public methods mirror the UI: :meth:`label`, :meth:`accept_suggestion`,
    :meth:`accept_page`, :meth:`skip`, :meth:`flag`, :meth:`undo`, :meth:`next_batch`,
    :meth:`move`, :meth:`select`, :meth:`toggle_view`, :meth:`add_class`, :meth:`zoom`,
    :meth:`review`, :meth:`review_labeled`, :meth:`next_page`, :meth:`previous_page`,
    :meth:`end_review`.
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
    # the open review for the view ({} when none): title, page (1-based), pages, n, how,
    # relabel, token
    review_info = traitlets.Dict().tag(sync=True)

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
        #: ``time.perf_counter()`` when the tiles on screen last gained a new model's
        #: suggestions (None before); for benchmarks.
        self.suggestions_at: float | None = None
        self._keys: dict[str, Any] = {}  # str(id) -> sample id, for the ids on screen
        self._next: list[Any] | None = None
        self._next_version: Any = None  # the model version the prefetched batch was picked with
        self._fetching: threading.Thread | None = None
        self._acting: int | None = None  # the thread running one of this widget's actions
        self._lock = threading.RLock()
        self._review: _Review | None = None
        self._reviews_opened = 0
        self._batch: list[Any] = []  # the query batch a review replaced, shown when it ends
        self._times: collections.deque[float] = collections.deque(maxlen=200)
        self.classes = list(session.classes)
        self.multi_label = session.multi_label
        self.on_msg(self._on_frontend_msg)
        self._unsubscribe = [
            session.on("trained", lambda **kw: self._on_trained()),
            session.on("train_started", lambda **kw: self._refresh_progress()),
            session.on("train_failed", lambda **kw: self._refresh_progress()),
            session.on("train_idle", lambda **kw: self._refresh_progress()),
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
    def reviewing(self) -> dict[str, Any] | None:
        """The open review (``title``, ``page`` counted from 1, ``pages``, ``n`` samples), or
        None while the query batch is shown."""
        r = self._review
        if r is None:
            return None
        return {"title": r.title, "page": r.page + 1, "pages": r.pages, "n": len(r.ids)}

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
        status = s.status  # the one status every view reads
        self.progress = {
            **{k: status[k] for k in ("labeled", "model_version", "staleness", "round")},
            **{k: status[k] for k in ("strategy", "worker", "worker_text", "train_error")},
            "training": status["worker"] == "training",
            "budget": self.budget,
            "per_minute": round(per_minute, 1),
        }

    def _set_classes(self) -> None:
        self.classes = list(self.session.classes)

    def _advance(self) -> None:
        """Move the cursor to the next pending sample; show the next batch when none is left.

        In a review the page never turns by itself (a second key press must not act on a
        page nobody looked at): the cursor moves on, and N turns the page."""
        keys = [it["key"] for it in self.items]
        pending = [
            i for i, k in enumerate(keys) if self.states.get(k, {}).get("status") == "pending"
        ]
        if self._review is not None:
            if self._review.relabel or not pending:
                self.cursor = min(self.cursor + 1, max(len(keys) - 1, 0))
            else:
                after = [i for i in pending if i > self.cursor]
                self.cursor = after[0] if after else pending[0]
            if not pending and not self._review.relabel:
                self.message = self._page_done_message()
            return
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
            items.append({"key": key, "sample": _payload(ds, sid), **_why(explain.get(sid, {}))})
        with self._lock, self.hold_sync():  # the lock: _on_trained must not redraw an old page
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

    def _on_trained(self) -> None:
        """A new model (on the training thread): the tiles on screen gain its suggestions and
        "why this sample" notes, without a new query."""
        self._refresh_progress()
        with self._lock:
            items = self.items
        ids = [self._keys[it["key"]] for it in items if it["key"] in self._keys]
        if not ids:
            return
        explain = {r["id"]: r for r in self.session.explain(ids)}
        with self._lock:
            if self.items is not items:  # another batch came meanwhile; it has this model's
                return
            self.items = [{**it, **_why(explain.get(self._keys[it["key"]], {}))} for it in items]
        self.suggestions_at = time.perf_counter()

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
            version = self.session.model_version
            ids = self.session.query(n, exclude=exclude)
            with self._lock:
                self._next, self._next_version = ids, version

    def _cheap(self) -> bool:
        """Whether a query now costs little: the newest model's pool arrays are there already,
        or the pool is small (a pass over it takes well under a second)."""
        s = self.session
        return s.arrays.cached_version == s.model_version or len(s.dataset) <= _REQUERY_POOL

    def _prefetch_failed(self, _exc: BaseException, text: str) -> None:
        self.errors.append(text)
        self.error = "Fetching the next batch failed; press N to retry."

    def next_batch(self) -> list[Any]:
        """Show the next batch: the prefetched one if ready, else query now. Returns its ids.

        During a review the batch is kept for when the review ends; the review stays on
        screen.
        """

        def action() -> list[Any]:
            fetching = self._fetching
            if fetching is not None and fetching.is_alive():
                self.loading = True
                fetching.join()
            with self._lock:
                ids, self._next = self._next, None
            ids = [i for i in (ids or []) if i not in self.session.labels]
            if ids and self._next_version != self.session.model_version and self._cheap():
                ids = []  # picked before the newest model: pick again with it
            if not ids:
                left = (
                    len(self.session.dataset)
                    - len(self.session.store)
                    - len(self.session.store.marked("skip"))
                )
                if left <= 0:
                    if self._review is not None:
                        self._batch = []
                        self.message = "Every sample is labeled or skipped."
                        return []
                    self._show([])
                    self.message = "Every sample is labeled or skipped."
                    return []
                self.loading = True
                ids = self.session.query(min(self.batch_size, left))
            if self._review is not None:  # never clobber a review: the batch waits for its end
                self._batch = list(ids)
                self.message = (
                    f"Round {self.session.round}: the next {len(ids)} samples are ready; "
                    "B shows them (ends the review)."
                )
                return ids
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
            review = self._review
            if review is not None and self._key(ids[0]) not in self._keys:
                page = review.page_of(ids[0])
                if page is not None:  # back to the review's page that holds it
                    review.page = page
                    self._show_page()
            missing = [i for i in ids if self._key(i) not in self._keys]
            if review is not None:  # those of other review pages stay there
                in_review = set(review.ids)
                missing = [i for i in missing if i not in in_review]
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

    def show(self, ids: Any) -> list[Any]:
        """Show specific samples (e.g. a selection from the map) instead of the query batch,
        in the given order: ``review(ids, order="given")``."""
        return self.review(ids, order="given")

    # ------------------------------------------------------------------ reviews
    def review(self, ids: Any, *, order: str = "prediction", title: str | None = None) -> list[Any]:
        """Review chosen samples (e.g. a selection from the map) a page at a time.

        Pages hold ``batch_size`` tiles; N turns to the next page (after the last one the review
        ends), P to the previous one, Shift+Enter accepts the page's suggestions, B goes back
        to the query batch (:meth:`end_review`).

        Parameters
        ----------
        ids : sample id or sequence of sample ids
        order : {"prediction", "given"}
            ``"prediction"`` groups the samples by the model's suggestion (in class order)
            and puts the least sure first in each group, so the doubtful ones are seen;
            without a model yet it keeps the given order, as ``"given"`` does.
        title : str, optional
            Where the samples come from, shown after their count ("from the map").

        Returns
        -------
        list
            The ids in review order.
        """
        where = "LabelingWidget.review"

        def action() -> list[Any]:
            check_choice(order, "order", where, ["prediction", "given"])
            if title is not None and not isinstance(title, str):
                raise param_error("title", where, "a str or None", title, TypeError)
            chosen = list(dict.fromkeys(self.session.sample_ids(ids, where=where)))
            if order == "given":
                how = "in the given order"
            elif self.session.model is None:
                how = "in the given order (no model yet)"
            else:
                chosen, how = self._arranged(chosen), "grouped by suggestion, least sure first"
            self._open_review(chosen, title or "", how, relabel=False)
            return chosen

        return self._guard(action)

    def review_labeled(
        self,
        *,
        label: str | None = None,
        annotator: str | None = None,
        disagree: bool = False,
        skipped: bool = False,
        flagged: bool = False,
    ) -> list[Any]:
        """Review labeled (or skipped, or flagged) samples; a class key relabels a tile, and
        one Backspace undoes that.

        The filters combine (all must hold). Without any, every labeled sample is reviewed.
        Samples are grouped by label and least sure first (the model's probability of the
        label, lowest first); the disagreements by how sure the model is, most sure first.

        Parameters
        ----------
        label : str, optional
            Only samples with this label (multi-label: whose labels include it).
        annotator : str, optional
            Only samples whose current label this annotator gave (``store.records()``).
        disagree : bool
            Only samples whose label the newest model predicts otherwise: likely label errors.
        skipped, flagged : bool
            Only skipped samples, or only flagged ones.

        Returns
        -------
        list
            The ids in review order.
        """
        where = "LabelingWidget.review_labeled"

        def action() -> list[Any]:
            s = self.session
            if label is not None:
                check_choice(label, "label", where, s.classes)
            if annotator is not None and not isinstance(annotator, str):
                raise param_error("annotator", where, "a str (a name)", annotator, TypeError)
            for name, value in (("disagree", disagree), ("skipped", skipped), ("flagged", flagged)):
                if not isinstance(value, (bool, np.bool_)):
                    raise param_error(name, where, "a bool", value, TypeError)
            if disagree and s.model is None:
                raise ValueError(
                    f"The 'disagree' parameter of {where} needs a trained model to compare "
                    "the labels with. Got True before the first model; call session.train()."
                )
            labels = s.labels
            by_label = label is not None or annotator is not None or disagree
            if skipped or flagged:
                marks = [
                    s.store.marked(f) for f, on in (("skip", skipped), ("flag", flagged)) if on
                ]
                chosen = sorted(set.intersection(*marks), key=str)
                if chosen:  # in pool order
                    chosen = [chosen[i] for i in np.argsort(s.dataset.positions(chosen))]
                if by_label:
                    chosen = [i for i in chosen if i in labels]
            else:
                chosen = list(labels)
            if annotator is not None:
                records = s.store.records()
                names = sorted({r["annotator"] for r in records if isinstance(r["annotator"], str)})
                if names:
                    check_choice(annotator, "annotator", where, names)
                gave = {r["sample_id"] for r in records if r["annotator"] == annotator}
                chosen = [i for i in chosen if i in gave]
            if label is not None:
                chosen = [
                    i
                    for i in chosen
                    if (label in labels[i] if self.multi_label else labels[i] == label)
                ]
            if disagree and chosen:
                chosen = self._disagreements(chosen, [labels[i] for i in chosen])
                how = "the model's most confident disagreements first"
            elif chosen:
                how = "grouped by label" + (", least sure first" if s.model is not None else "")
                chosen = self._arranged(chosen, [labels.get(i) for i in chosen])
            if not chosen:
                given = {"label": label, "annotator": annotator, "disagree": disagree}
                given |= {"skipped": skipped, "flagged": flagged}
                text = ", ".join(f"{k}={v!r}" for k, v in given.items() if v not in (None, False))
                raise ValueError(
                    f"The filters of {where} must match at least one sample. Got "
                    f"{text or 'none'}, which match none ({len(labels)} labeled, "
                    f"{len(s.store.marked('skip'))} skipped, {len(s.store.marked('flag'))} "
                    "flagged)."
                )
            marks_text = " and ".join(
                n for n, on in (("skipped", skipped), ("flagged", flagged)) if on
            )
            parts = [marks_text] if marks_text else []
            if label is not None:
                parts.append(f"labeled {label}")
            elif not parts:
                parts.append("labeled")
            if annotator is not None:
                parts.append(f"by {annotator}")
            if disagree:
                parts.append("where the model disagrees")
            self._open_review(chosen, " ".join(parts), how, relabel=True)
            return chosen

        return self._guard(action)

    def next_page(self) -> list[Any]:
        """Show the review's next page; after the last one, end the review. Returns the ids
        on screen."""

        def action() -> list[Any]:
            review = self._open("LabelingWidget.next_page")
            if review.page + 1 >= review.pages:
                return self.end_review()
            review.page += 1
            self._show_page()
            return self.batch_ids

        return self._guard(action)

    def previous_page(self) -> list[Any]:
        """Show the review's previous page (the first page stays). Returns the ids on screen."""

        def action() -> list[Any]:
            review = self._open("LabelingWidget.previous_page")
            if review.page == 0:
                self.message = self._review_message("This is the first page")
                return self.batch_ids
            review.page -= 1
            self._show_page()
            return self.batch_ids

        return self._guard(action)

    def end_review(self) -> list[Any]:
        """Go back to the query batch the review replaced (its unfinished part; a new batch when
        it is finished). Nothing happens without a review. Returns the ids on screen."""

        def action() -> list[Any]:
            if self._review is None:
                return self.batch_ids
            back, self._review, self._batch = self._batch, None, []
            self.review_info = {}
            done = set(self.session.labels) | self.session.store.marked("skip")
            if any(i not in done for i in back):
                self._show(back)
                self.message = f"Back to the batch of round {self.session.round}."
                return back
            return self.next_batch()

        return self._guard(action)

    def accept_page(self, *, sample_ids: Any = None) -> list[Any]:
        """Label every pending sample on screen (the review page, or the batch) that has a
        suggestion with it, as one action: one :meth:`undo` reverts them all.

        Samples labeled by hand keep their label; skipped ones stay skipped. The page does not
        turn (press N); a batch's next batch is prefetched.

        Parameters
        ----------
        sample_ids : sequence of sample ids, optional
            Only these (the view sends the tiles the person saw, so a key press never accepts a
            page that replaced them meanwhile). Each must be on screen.

        Returns
        -------
        list
            The ids labeled (empty when no pending sample on screen has a suggestion).
        """
        where = "LabelingWidget.accept_page"

        def action() -> list[Any]:
            only = None
            if sample_ids is not None:
                only = {self._key(i) for i in sample_ids}
                unknown = sorted(only - set(self._keys))
                if unknown:
                    raise KeyError(f"{where}: samples {short_repr(unknown)} are not on screen.")
            states = self.states
            ids, labels = [], []
            for it in self.items:
                key = it["key"]
                if it.get("suggestion") is None or (only is not None and key not in only):
                    continue
                if states.get(key, {}).get("status") == "pending":
                    ids.append(self._keys[key])
                    labels.append(it["suggestion"])
            if not ids:
                self.message = "Nothing to accept: no pending sample here has a suggestion."
                return []
            with self.hold_sync():
                self.session.label(ids, labels, source="suggestion")
                self._record(ids)
                # the cursor moves to a sample still pending, if any; neither the page nor the
                # batch turns by itself (a second Shift+Enter must not accept unseen samples)
                states = self.states
                pending = [
                    i
                    for i, it in enumerate(self.items)
                    if states.get(it["key"], {}).get("status") == "pending"
                ]
                if pending:
                    after = [i for i in pending if i > self.cursor]
                    self.cursor = after[0] if after else pending[0]
                where_text = "this page" if self._review is not None else "this batch"
                turn = "N next page" if self._review is not None else "N next batch"
                self.message = (
                    f"Accepted {len(ids)} suggestion{'s' if len(ids) != 1 else ''} on "
                    f"{where_text} (Backspace undoes them) · {turn}."
                )
            if self._review is None and self.prefetch:
                self._start_prefetch()
            return ids

        return self._guard(action)

    def _open(self, where: str) -> _Review:
        if self._review is None:
            raise ValueError(f"{where}: no review is open; call review(ids) first.")
        return self._review

    def _probs(self, ids: list[Any]) -> np.ndarray | None:
        """The newest model's probabilities for ``ids`` (None before the first model)."""
        if self.session.model is None:
            return None
        return np.asarray(self.session.predict_proba(ids), dtype=np.float64)

    def _arranged(self, ids: list[Any], labels: list[Any] | None = None) -> list[Any]:
        """``ids`` grouped by class, least sure first: the class is the label where one is
        given, else the model's suggestion; "sure" is the model's probability of that class
        (multi-label: of that set of classes). Without a model: by label, else as given."""
        probs = self._probs(ids)
        classes = self.session.classes
        index = {c: k for k, c in enumerate(classes)}
        n, width = len(ids), len(classes)
        given: list[Any] = labels if labels is not None else [None] * n
        known = np.array([lab is not None for lab in given], dtype=bool)
        if self.multi_label:
            hot = np.zeros((n, width), dtype=bool)
            for row in np.flatnonzero(known):
                hot[row, [index[c] for c in given[row]]] = True
            sure = None
            if probs is not None:
                p = np.zeros((n, width))
                p[:, : probs.shape[1]] = probs[:, :width]
                hot[~known] = p[~known] >= 0.5
                sure = np.where(hot, p, 1.0 - p).min(axis=1)
            groups = np.unique(hot, axis=0, return_inverse=True)[1].reshape(-1)
            if probs is None:
                groups[~known] = groups.max() + 1  # neither label nor suggestion: last
        else:
            groups = np.full(n, width)  # neither label nor suggestion: last
            for row in np.flatnonzero(known):
                groups[row] = index[given[row]]
            sure = None
            if probs is not None:
                groups[~known] = probs[~known].argmax(axis=1)
                inside = groups < probs.shape[1]  # a class added after the model: prob 0
                sure = np.zeros(n)
                sure[inside] = probs[np.flatnonzero(inside), groups[inside]]
        return [ids[i] for i in _review_order(sure, groups)]

    def _disagreements(self, ids: list[Any], labels: list[Any]) -> list[Any]:
        """The ids whose label the newest model predicts otherwise, its surest first."""
        probs = self._probs(ids)
        assert probs is not None  # checked by the caller
        classes = self.session.classes
        if self.multi_label:
            index = {c: k for k, c in enumerate(classes)}
            hot = np.zeros((len(ids), probs.shape[1]), dtype=bool)
            for row, lab in enumerate(labels):
                hot[row, [index[c] for c in lab if index[c] < probs.shape[1]]] = True
            predicted = probs >= 0.5
            differs = (predicted != hot).any(axis=1)
            sure = np.where(predicted, probs, 1.0 - probs).min(axis=1)
        else:
            names = np.asarray(classes[: probs.shape[1]], dtype=object)
            predicted_names = names[probs.argmax(axis=1)]
            differs = predicted_names != np.asarray(labels, dtype=object)
            sure = probs.max(axis=1)
        rows = np.flatnonzero(differs)
        rows = rows[np.argsort(-sure[rows], kind="stable")]
        return [ids[i] for i in rows]

    def _open_review(self, ids: list[Any], title: str, how: str, *, relabel: bool) -> None:
        if self._review is None:  # a review opened from a review goes back to the same batch
            self._batch = self.batch_ids
        self._reviews_opened += 1
        self._review = _Review(
            ids, title, how, self.batch_size, relabel=relabel, token=self._reviews_opened
        )
        self._show_page()

    def _show_page(self) -> None:
        review = self._review
        assert review is not None
        with self.hold_sync():
            self._show(review.page_ids())
            if review.relabel:
                self.cursor = 0  # every tile is up for review, not only the pending ones
            self.review_info = {
                "title": review.title,
                "page": review.page + 1,
                "pages": review.pages,
                "n": len(review.ids),
                "how": review.how,
                "relabel": review.relabel,
                "token": review.token,
            }
            self.message = self._review_message()

    def _review_message(self, lead: str = "") -> str:
        """What the review shows, and its keys (the footer)."""
        r = self._review
        assert r is not None
        n = len(r.ids)
        what = f"Review: {n} sample{'s' if n != 1 else ''}" + (f" {r.title}" if r.title else "")
        if r.relabel:
            keys = "a class key relabels, N/P pages, B back to the batch"
        else:
            accept = ", Shift+Enter accepts the page" if self.session.model is not None else ""
            keys = f"N/P pages{accept}, B back to the batch"
        return " · ".join(x for x in (lead, what, f"page {r.page + 1}/{r.pages}", r.how, keys) if x)

    def _page_done_message(self) -> str:
        r = self._review
        assert r is not None
        done = set(self.session.labels) | self.session.store.marked("skip")
        if all(i in done for i in r.ids):
            return f"All {len(r.ids)} samples of this review are done: B back to the batch."
        if r.page + 1 < r.pages:
            return f"Page {r.page + 1}/{r.pages} done: N for the next page."
        return f"Page {r.page + 1}/{r.pages} done: P goes back, N or B back to the batch."

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
        "accept_page",
        "page",
        "end_review",
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
            elif action == "next":  # N: the review's next page, else the next batch
                if self._review is not None:
                    self.next_page()
                else:
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
            elif action == "accept_page":
                keys = content.get("keys")
                if isinstance(keys, list):  # the tiles the person saw; gone ones are left out
                    seen = [self._keys[k] for k in keys if isinstance(k, str) and k in self._keys]
                    self.accept_page(sample_ids=seen)
                else:
                    self.accept_page()
            elif action == "page" and self._review is not None:
                delta = int(content.get("delta", 0))
                if delta > 0:
                    self.next_page()
                elif delta < 0:
                    self.previous_page()
            elif action == "end_review":
                self.end_review()
        except Exception:  # noqa: BLE001 (already shown in the widget and kept in errors)
            if not self.error:
                self.errors.append(traceback.format_exc())
                self.error = traceback.format_exc().strip().splitlines()[-1]
        finally:
            seq = content.get("seq")
            if isinstance(seq, int):
                self.ack = seq
