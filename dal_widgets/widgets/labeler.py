"""The in-cell labeling widget: keyboard-first, model-assisted, never loses a label.

A thin view over a :class:`~dal_widgets.Session`: every action goes through the session (and so
through the durable store), and a tile turns "done" only after the store committed. Every UI
action has a public Python method, which is how the tests drive it without a browser.
"""

from __future__ import annotations

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
from dal_widgets.widgets._label_messages import handle
from dal_widgets.widgets._label_prefetch import Prefetcher, unlabeled_left
from dal_widgets.widgets._label_tiles import (
    accepted_message,
    next_pending,
    pending,
    progress_line,
    resolve,
    suggested,
    tile_key,
    tile_states,
    tiles,
    with_suggestions,
)
from dal_widgets.widgets._renderers import register_renderer, zoom_payload
from dal_widgets.widgets._review import Reviews, Selection, select_given, select_labeled

__all__ = ["LabelingWidget", "register_renderer"]

_HERE = Path(__file__).parent


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
        self._prefetcher = Prefetcher(session, self._prefetch_failed)
        self._acting: int | None = None  # the thread running one of this widget's actions
        self._lock = threading.RLock()
        self._reviews = Reviews()
        self._times: collections.deque[float] = collections.deque(maxlen=200)
        self.classes = list(session.classes)
        self.multi_label = session.multi_label
        self.on_msg(self._on_frontend_msg)
        self._unsubscribe = [
            session.on("trained", lambda **kw: self._on_trained()),
            session.on("train_started", lambda **kw: self._refresh_progress()),
            session.on("train_failed", lambda **kw: self._refresh_progress()),
            session.on("train_idle", lambda **kw: self._refresh_progress()),
            session.on("embedding", lambda **kw: self._refresh_progress()),
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
        review = self._reviews.current
        return None if review is None else review.summary()

    @property
    def prefetched(self) -> list[Any] | None:
        """The next batch, queried in the background while this one is labeled (None until
        it is ready)."""
        return self._prefetcher.ids

    def wait_prefetch(self, timeout: float | None = None) -> bool:
        """Block until a background query of the next batch is done; False on timeout."""
        return self._prefetcher.wait(timeout)

    def drop_prefetched(self) -> None:
        """Forget the prefetched batch (the strategy changed): the next one is queried anew."""
        self._prefetcher.drop()

    def receive(self, message: Any, buffers: Any = None) -> None:
        """Act on a message as the browser sends it (``{"action": ..., "seq": ...}``); what
        the labeler's JavaScript calls, also for driving the widget from Python."""
        self._on_frontend_msg(self, message, buffers)

    # ------------------------------------------------------------------ helpers
    def _resolve(self, sample_id: Any, where: str) -> Any:
        """The sample id to act on: the given one, or the one under the cursor."""
        return resolve(self.session, sample_id, self.items, self.cursor, self._keys, where)

    def _set_state(self, ids: list[Any]) -> None:
        """Read the committed status of ids from the session and publish it."""
        decided = self._votes() is not None
        self.states = tile_states(self.session, ids, self._keys, self.states, decided=decided)

    def _votes(self) -> dict[Any, str] | None:
        """Who gave which label, while an adjudication review is open (else None)."""
        review = self._reviews.current
        return None if review is None else review.votes

    def _commit(self, sid: Any, label: Any, source: str = "human") -> None:
        """Save a label: the decision on a disagreement in an adjudication review."""
        votes = self._votes()
        if votes is not None and sid in votes:
            self.session.adjudicate([sid], label)
        else:
            self.session.label([sid], label, source=source)

    def _refresh_progress(self) -> None:
        now = time.time()
        self.progress = progress_line(self.session.status, self._times, self.budget, now)

    def _set_classes(self) -> None:
        self.classes = list(self.session.classes)

    def _advance(self) -> None:
        """Move the cursor to the next pending sample; show the next batch when none is left.

        In a review the page never turns by itself (a second key press must not act on a
        page nobody looked at): the cursor moves on, and N turns the page."""
        waiting = pending(self.items, self.states)
        review = self._reviews.current
        if review is not None:
            if review.relabel or not waiting:
                self.cursor = min(self.cursor + 1, max(len(self.items) - 1, 0))
            else:
                self.cursor = next_pending(waiting, self.cursor)
            if not waiting and not review.relabel:
                self.message = review.page_done_message(self._done())
            return
        if not waiting:
            self.next_batch()
            return
        self.cursor = next_pending(waiting, self.cursor)
        if self.prefetch and len(waiting) <= max(1, len(self.items) // 5):
            self._start_prefetch()

    def _external(self, ids: list[Any]) -> None:
        if self._acting == threading.get_ident():
            return  # the echo of this widget's own action, which redraws itself once
        if any(tile_key(i) in self._keys for i in ids):
            self._set_state(ids)
        self._refresh_progress()

    def _advance_from(self, sample_id: Any) -> None:
        """After an action on the sample under the cursor, move on (or to the next batch)."""
        if self.items and self.items[self.cursor]["key"] == tile_key(sample_id):
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
        keys, items = tiles(self.session, ids)
        votes = self._votes()
        if votes is not None:  # an adjudication: each tile says who gave which label
            items = [{**it, "votes": votes.get(keys[it["key"]])} for it in items]
        with self._lock, self.hold_sync():  # the lock: _on_trained must not redraw an old page
            self._keys = keys
            self.states = {}
            self.items = items
            self.cursor = 0
            self._set_state(ids)
            self.zoomed = {}
            self._refresh_progress()
            self.cursor = (pending(items, self.states) or [0])[0]

    def _on_trained(self) -> None:
        """A new model (on the training thread): the tiles on screen gain its suggestions and
        "why this sample" notes, without a new query."""
        self._refresh_progress()
        with self._lock:
            items = self.items
        updated = with_suggestions(self.session, items, self._keys)
        if updated is None:
            return
        with self._lock:
            if self.items is not items:  # another batch came meanwhile; it has this model's
                return
            self.items = updated
        self.suggestions_at = time.perf_counter()

    def _start_prefetch(self) -> None:
        self._prefetcher.start(list(self._keys.values()), self.batch_size)

    def _prefetch_failed(self, _exc: BaseException, text: str) -> None:
        self.errors.append(text)
        self.error = "Fetching the next batch failed; press N to retry."

    def next_batch(self) -> list[Any]:
        """Show the next batch: the prefetched one if ready, else query now. Returns its ids.

        During a review the batch is kept for when the review ends; the review stays on
        screen.
        """

        def action() -> list[Any]:
            if self._prefetcher.running:
                self.loading = True
                self._prefetcher.wait()
            ids = self._prefetcher.take()
            if not ids:
                left = unlabeled_left(self.session)
                if left <= 0:
                    if self._reviews.current is not None:
                        self._reviews.batch = []
                    else:
                        self._show([])
                    self.message = "Every sample is labeled or skipped."
                    return []
                self.loading = True
                ids = self.session.query(min(self.batch_size, left))
            if self._reviews.current is not None:  # never clobber a review: the batch waits
                self._reviews.batch = list(ids)
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
            self._commit(sid, label)
            self._record([sid])
            self._advance_from(sid)

        self._guard(action)

    def accept_suggestion(self, *, sample_id: Any = None) -> None:
        """Label with the model's suggestion (recorded with source "suggestion")."""

        def action() -> None:
            sid = self._resolve(sample_id, "LabelingWidget.accept_suggestion")
            item = next((it for it in self.items if it["key"] == tile_key(sid)), None)
            if item is None or item.get("suggestion") is None:  # (an empty set is a suggestion)
                raise ValueError(
                    "There is no model suggestion for this sample yet (no model trained)."
                )
            self._commit(sid, item["suggestion"], source="suggestion")
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
            review = self._reviews.current
            if review is not None and tile_key(ids[0]) not in self._keys:
                page = review.page_of(ids[0])
                if page is not None:  # back to the review's page that holds it
                    review.page = page
                    self._show_page()
            in_review = set(() if review is None else review.ids)  # (they stay on their page)
            missing = [i for i in ids if tile_key(i) not in self._keys and i not in in_review]
            if missing:
                current = list(self._keys.values())
                self._show(missing + current)
            self._set_state(ids)
            self._refresh_progress()
            keys = [it["key"] for it in self.items]
            self.cursor = keys.index(tile_key(ids[0]))
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
        key = tile_key(sample_id)
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
            chosen = select_given(self.session, ids, order=order, title=title, where=where)
            self._open_review(chosen, relabel=False)
            return chosen.ids

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
            chosen = select_labeled(
                self.session,
                label=label,
                annotator=annotator,
                disagree=disagree,
                skipped=skipped,
                flagged=flagged,
                where=where,
            )
            self._open_review(chosen, relabel=True)
            return chosen.ids

        return self._guard(action)

    def adjudicate(self) -> list[Any]:
        """Review a team's disagreements (items whose annotators gave different labels and
        that no one decided yet): each tile shows who gave which label, and a class key
        records the decision, which becomes the item's training label under every rule
        (``Session.adjudicate``). N/P page, B goes back to the batch.

        Returns
        -------
        list
            The ids up for a decision, oldest first.
        """

        def action() -> list[Any]:
            found = self.session.disagreements()
            if not found:
                self.message = "No disagreements to adjudicate."
                return []
            votes = {
                sid: " · ".join(f"{who}: {label}" for who, label in pairs)
                for sid, pairs in found.items()
            }
            chosen = Selection(list(found), "to adjudicate", "oldest disagreement first")
            self._open_review(chosen, relabel=True, votes=votes)
            return chosen.ids

        return self._guard(action)

    def next_page(self) -> list[Any]:
        """Show the review's next page; after the last one, end the review. Returns the ids
        on screen."""

        def action() -> list[Any]:
            review = self._reviews.required("LabelingWidget.next_page")
            if review.page + 1 >= review.pages:
                return self.end_review()
            review.page += 1
            self._show_page()
            return self.batch_ids

        return self._guard(action)

    def previous_page(self) -> list[Any]:
        """Show the review's previous page (the first page stays). Returns the ids on screen."""

        def action() -> list[Any]:
            review = self._reviews.required("LabelingWidget.previous_page")
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
            if self._reviews.current is None:
                return self.batch_ids
            back = self._reviews.end()
            self.review_info = {}
            done = self._done()
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
            ids, labels = suggested(self.items, self.states, self._keys, sample_ids, where)
            if not ids:
                self.message = "Nothing to accept: no pending sample here has a suggestion."
                return []
            with self.hold_sync():
                self.session.label(ids, labels, source="suggestion")
                self._record(ids)
                # the cursor moves to a sample still pending, if any; neither the page nor the
                # batch turns by itself (a second Shift+Enter must not accept unseen samples)
                waiting = pending(self.items, self.states)
                if waiting:
                    self.cursor = next_pending(waiting, self.cursor)
                paging = self._reviews.current is not None
                self.message = accepted_message(len(ids), paging=paging)
            if self._reviews.current is None and self.prefetch:
                self._start_prefetch()
            return ids

        return self._guard(action)

    def _done(self) -> set[Any]:
        """The labeled and the skipped samples."""
        return set(self.session.done_labels) | self.session.store.marked("skip")

    def _open_review(
        self, chosen: Selection, *, relabel: bool, votes: dict[Any, str] | None = None
    ) -> None:
        self._reviews.start(
            chosen, self.batch_size, relabel=relabel, on_screen=self.batch_ids, votes=votes
        )
        self._show_page()

    def _show_page(self) -> None:
        review = self._reviews.current
        assert review is not None
        with self.hold_sync():
            self._show(review.page_ids())
            if review.relabel:
                self.cursor = 0  # every tile is up for review, not only the pending ones
            self.review_info = review.info()
            self.message = self._review_message()

    def _review_message(self, lead: str = "") -> str:
        review = self._reviews.current
        assert review is not None
        return review.message(lead, model=self.session.model is not None)

    def zoom(self, *, sample_id: Any = None, size: int = 320) -> None:
        """Show a larger view of an image sample (rendered from the original on demand)."""

        def action() -> None:
            sid = self._resolve(sample_id, "LabelingWidget.zoom")
            sample = zoom_payload(self.session.dataset, sid, size)
            self.zoomed = {"key": tile_key(sid), "sample": sample}

        self._guard(action)

    def close(self) -> None:
        for unsubscribe in getattr(self, "_unsubscribe", ()):
            unsubscribe()
        super().close()

    # ------------------------------------------------------------------ frontend messages
    def _on_frontend_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """Dispatch a message from the browser to the public method of the same action."""
        handle(self, content, self._keys)
