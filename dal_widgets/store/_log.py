"""The record of label actions, the same on every backend (see the package doc): actions,
events, state, queries and rounds, in SQL that SQLite and PostgreSQL both run.

A backend gives ``_conn`` (``execute(sql, args)`` with ``?`` placeholders, returning a cursor),
``_transaction()``, ``_check_open()`` and the ``_db_id`` / ``_py_id`` pair that turns a sample id
into its stored form and back (SQLite keeps ints and strs as they are; PostgreSQL keeps JSON
text, so 7 and "7" stay two ids).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dal_widgets._checks import param_error, short_repr
from dal_widgets.store._errors import StoreClosedError, StoreError
from dal_widgets.store._rounds import ROUND_FIELDS, RoundRecord
from dal_widgets.store._schema import SOURCES, _iso, _now, _Schema

__all__: list[str] = []

_UPSERT_STATE = (
    "INSERT INTO state(sample_id, field, value, action_id) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(sample_id, field) DO UPDATE SET value = excluded.value, "
    "action_id = excluded.action_id"
)
_UPSERT_ROUND = (
    "INSERT INTO rounds(round, data) VALUES (?, ?) "
    "ON CONFLICT(round) DO UPDATE SET data = excluded.data"
)


class _EventLog(_Schema):
    """Reading and writing the record of actions (the base of every store class)."""

    #: The class name shown in error messages.
    _api = "LabelStore"
    #: Several sessions write it (a PostgreSQL project in team mode): undo takes back only
    #: this annotator's newest action, and never over a newer change by someone else.
    _shared = False
    annotator: str

    @property
    def shared(self) -> bool:
        """Whether several sessions write this store at once (a team's project)."""
        return self._shared

    _closed_reason: str | None
    _close_callbacks: dict[object, Callable[[str], Any]]
    close_callback_errors: list[str]

    # ------------------------------------------------------------------ closing
    def _mark_closed(self, reason: str) -> list[Callable[[str], Any]] | None:
        """Record why the store closes and take its close callbacks (call under ``_lock``);
        None when it was closed already."""
        if self._closed_reason is not None:
            return None
        self._closed_reason = reason
        callbacks = list(self._close_callbacks.values())
        self._close_callbacks.clear()
        return callbacks

    @property
    def closed(self) -> bool:
        """Whether this store can no longer be used."""
        return self._closed_reason is not None

    def add_close_callback(self, callback: Callable[[str], Any]) -> Callable[[], None]:
        """Call ``callback(reason)`` once when this store closes: :meth:`close`, or a takeover
        by a newer store on the same file or project (then in the thread that opened the new one).

        Callbacks run after the store is closed, outside its lock, so a callback may stop a
        thread that was using the store. One that raises is recorded (a traceback) in
        ``close_callback_errors`` and the others still run. Added to a closed store, the
        callback is called at once.

        Returns
        -------
        callable
            Call it (no arguments) to unsubscribe.
        """
        if not callable(callback):
            raise param_error(
                "callback",
                f"{self._api}.add_close_callback",
                "a callable taking the reason (a str)",
                callback,
                TypeError,
            )
        token = object()
        with self._lock:
            reason = self._closed_reason
            if reason is None:
                self._close_callbacks[token] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._close_callbacks.pop(token, None)

        if reason is not None:
            self._run_close_callbacks([callback], reason)
        return unsubscribe

    def _run_close_callbacks(self, callbacks: list[Callable[[str], Any]], reason: str) -> None:
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:  # noqa: BLE001 (recorded; a view's bug must not block closing)
                self.close_callback_errors.append(traceback.format_exc())

    def _close(self, reason: str, *, taken_over: bool = False) -> None:
        self._run_close_callbacks(self._shut(reason, taken_over=taken_over), reason)

    def close(self) -> None:
        """Close the store and release the write lock. Idempotent."""
        self._close("close() was called")

    def __enter__(self) -> Any:  # the LabelStore itself
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self, writing: bool = False, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        if self._closed_reason is not None:
            raise StoreClosedError(
                f"{prefix}The label store {self.path!r} is closed: {self._closed_reason}. "
                "Use the newer store or session, or open a new one."
            )
        if writing and self.read_only:
            raise StoreError(
                f"{prefix}The label store {self.path!r} was opened with read_only=True; it "
                "can be read and exported, not written (no labels, queries or training rounds)."
            )

    def check_writable(self, where: str = "") -> None:
        """Raise at once, before any work, when this store cannot take writes: closed
        (:class:`StoreClosedError`) or opened read-only (:class:`StoreError`)."""
        self._check_open(writing=True, where=where)

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the dataset the store was made for."""
        return self._fingerprint

    @property
    def dataset_name(self) -> str:
        """The name of the dataset the store was made for (as stored when it was made)."""
        return self._dataset_name

    @property
    def classes(self) -> list[str]:
        """The class list (it only grows, through :meth:`add_class`)."""
        return list(self._classes)

    @property
    def round(self) -> int:
        """The current round: 0 before the first query, then one more per query."""
        return self._round

    def _encode(self, label: Any) -> str:
        if not self.multi_label:
            return label
        order = {c: i for i, c in enumerate(self._classes)}
        return json.dumps(sorted(set(label), key=order.__getitem__), ensure_ascii=False)

    def _decode(self, value: str | None) -> Any:
        if value is None or not self.multi_label:
            return value
        return tuple(json.loads(value))

    @property
    def labels(self) -> dict[Any, Any]:
        """Current labels: sample id -> class name (a tuple of names when multi-label; a copy)."""
        with self._lock:
            return dict(self._labels)

    def marked(self, field: str) -> set[Any]:
        """Ids currently marked ``"skip"`` or ``"flag"``."""
        if field not in self._marks:
            raise param_error("field", f"{self._api}.marked", "'skip' or 'flag'", field)
        with self._lock:
            return set(self._marks[field])

    def __len__(self) -> int:
        return len(self._labels)

    def history(self, sample_id: Any = None) -> list[dict[str, Any]]:
        """Every event (oldest first), or those of one sample: what changed, when, by whom."""
        sql = (
            "SELECT e.sample_id, e.field, e.old, e.new, a.action_id, a.kind, a.source, a.annotator, "
            "a.round, a.ts, a.undoes, a.undone_by FROM events e JOIN actions a USING(action_id)"
        )
        args: tuple[Any, ...] = ()
        if sample_id is not None:
            sql += " WHERE e.sample_id = ?"
            args = (self._db_id(sample_id),)
        sql += " ORDER BY a.action_id, e.rowid"
        with self._lock:
            self._check_open()
            rows = self._conn.execute(sql, args).fetchall()
        keys = (
            "sample_id",
            "field",
            "old",
            "new",
            "action_id",
            "kind",
            "source",
            "annotator",
            "round",
            "ts",
            "undoes",
            "undone_by",
        )
        out = [dict(zip(keys, r)) for r in rows]
        for rec in out:
            rec["timestamp"] = _iso(rec.pop("ts"))
            rec["sample_id"] = self._py_id(rec["sample_id"])
        return out

    def records(self) -> list[dict[str, Any]]:
        """One row per labeled sample: id, label, round, source, annotator, ISO timestamp."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT s.sample_id, s.value, a.round, a.source, a.annotator, a.ts FROM state s "
                "JOIN actions a ON a.action_id = s.action_id WHERE s.field = 'label' ORDER BY a.action_id, "
                "(SELECT MIN(e.rowid) FROM events e WHERE e.action_id = s.action_id AND e.sample_id = s.sample_id)"
            ).fetchall()
        return [
            {
                "sample_id": self._py_id(r[0]),
                "label": list(self._decode(r[1])) if self.multi_label else r[1],
                "round": r[2],
                "source": r[3],
                "annotator": r[4],
                "timestamp": _iso(r[5]),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ writing
    def _validate_ids(self, ids: Sequence[Any], where: str) -> list[Any]:
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, str)):
                raise param_error("ids", where, "plain int or str sample ids", i, TypeError)
            out.append(i)
        if len(set(out)) != len(out):
            dup = sorted({str(i) for i in out if out.count(i) > 1})[:5]
            raise ValueError(
                f"The 'ids' parameter of {where} must not repeat an id. Got duplicates: {dup}."
            )
        return out

    def _apply(
        self,
        kind: str,
        changes: Iterable[tuple[Any, str, str | None]] | Callable[[Any], Iterable[Any]],
        *,
        source: str,
        annotator: str | None,
    ) -> int:
        """Write one action: (sample_id, field, new value or None to clear). One transaction.
        ``changes`` may be a function of the transaction's connection, called inside it (for
        changes that depend on what is committed, as a team's training labels do)."""
        self._check_open(writing=True)
        if source not in SOURCES:
            raise param_error("source", self._api, f"one of {SOURCES}", source)
        with self._lock:
            with self._transaction() as conn:
                changes = list(changes(conn) if callable(changes) else changes)
                if not changes:
                    return 0  # nothing to record (a team's labels already say so)
                action_id = self._insert_action(
                    conn,
                    "INSERT INTO actions(kind, source, annotator, round, ts) VALUES (?, ?, ?, ?, ?)",
                    (kind, source, annotator or self.annotator, self._round, _now()),
                )
                self._write_changes(conn, action_id, changes)
            self._apply_to_cache(changes)
        return action_id

    def _write_changes(
        self, conn: Any, action_id: int, changes: list[tuple[Any, str, str | None]]
    ) -> None:
        events = []
        for py_id, field, new in changes:
            sample_id = self._db_id(py_id)
            row = conn.execute(
                "SELECT value, action_id FROM state WHERE sample_id = ? AND field = ?",
                (sample_id, field),
            ).fetchone()
            old, old_action = (row[0], row[1]) if row else (None, None)
            events.append((action_id, sample_id, field, old, old_action, new))
            if new is None:
                conn.execute(
                    "DELETE FROM state WHERE sample_id = ? AND field = ?", (sample_id, field)
                )
            else:
                conn.execute(
                    _UPSERT_STATE,
                    (sample_id, field, new, action_id),
                )
        conn.executemany(
            "INSERT INTO events(action_id, sample_id, field, old, old_action, new) VALUES (?, ?, ?, ?, ?, ?)",
            events,
        )

    def _apply_to_cache(self, changes: Iterable[tuple[Any, str, str | None]]) -> None:
        for sample_id, field, new in changes:
            if field == "label":
                if new is None:
                    self._labels.pop(sample_id, None)
                else:
                    self._labels[sample_id] = self._decode(new)
            elif new is None:
                self._marks[field].discard(sample_id)
            else:
                self._marks[field].add(sample_id)

    def label(
        self,
        ids: Sequence[Any],
        labels: Sequence[str],
        *,
        source: str = "human",
        annotator: str | None = None,
    ) -> int:
        """Record labels (class names) for ids as one action; committed when this returns.

        Labeling a sample marked "skip" clears the skip mark in the same action.

        Returns
        -------
        int
            The action id (what :meth:`undo` reverts).
        """
        where = f"{self._api}.label"
        ids = self._validate_ids(ids, where)
        labels = list(labels)
        if len(labels) != len(ids):
            raise ValueError(
                f"The 'labels' parameter of {where} must have one label per id ({len(ids)}). Got {len(labels)}."
            )
        if self.multi_label:
            bad = [
                lab
                for lab in labels
                if isinstance(lab, str)
                or not isinstance(lab, (list, tuple, set, frozenset))
                or any(c not in self._classes for c in lab)
            ]
            expected = f"collections of class names from {self._classes} (multi-label store)"
        else:
            bad = [lab for lab in labels if not isinstance(lab, str) or lab not in self._classes]
            expected = f"class names from {self._classes}"
        if bad:
            raise ValueError(
                f"The 'labels' parameter of {where} must hold {expected}. Got {short_repr(bad[:5])} instead."
            )
        labels = [self._encode(lab) for lab in labels]
        if not ids:
            raise param_error("ids", where, "at least one sample id", ids)
        changes: list[tuple[Any, str, str | None]] = [
            (i, "label", lab) for i, lab in zip(ids, labels)
        ]
        skipped = self._marks["skip"]
        changes += [(i, "skip", None) for i in ids if i in skipped]
        return self._apply("label", changes, source=source, annotator=annotator)

    def unlabel(self, ids: Sequence[Any], *, annotator: str | None = None) -> int:
        """Remove the labels of ids (one undoable action; history keeps them)."""
        where = f"{self._api}.unlabel"
        ids = [i for i in self._validate_ids(ids, where) if i in self._labels]
        if not ids:
            raise ValueError(f"{where} was given no labeled sample ids.")
        return self._apply(
            "unlabel", [(i, "label", None) for i in ids], source="human", annotator=annotator
        )

    def mark(
        self, ids: Sequence[Any], field: str, value: bool = True, *, annotator: str | None = None
    ) -> int:
        """Set or clear the ``"skip"`` or ``"flag"`` mark of ids (one undoable action)."""
        where = f"{self._api}.mark"
        if field not in ("skip", "flag"):
            raise param_error("field", where, "'skip' or 'flag'", field)
        ids = self._validate_ids(ids, where)
        if not ids:
            raise param_error("ids", where, "at least one sample id", ids)
        return self._apply(
            "mark",
            [(i, field, "1" if value else None) for i in ids],
            source="human",
            annotator=annotator,
        )

    def undo(self, *, annotator: str | None = None) -> list[Any] | None:
        """Revert the newest action that is not undone yet.

        Returns the ids it changed back, or None when there is nothing to undo. The undo is
        recorded as an action of its own; labels are never deleted from history.
        """
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                # Shared: this annotator's own, not the training labels a rule re-decided.
                mine = " AND annotator = ? AND source != 'team'" if self._shared else ""
                row = conn.execute(
                    "SELECT action_id FROM actions WHERE kind != 'undo' AND undone_by IS NULL"
                    f"{mine} ORDER BY action_id DESC LIMIT 1",
                    (annotator or self.annotator,) if self._shared else (),
                ).fetchone()
                if row is None:
                    return None
                target = int(row[0])
                events = conn.execute(
                    "SELECT sample_id, field, old, old_action FROM events WHERE action_id = ? ORDER BY rowid DESC",
                    (target,),
                ).fetchall()
                undo_id = self._insert_action(
                    conn,
                    "INSERT INTO actions(kind, source, annotator, round, ts, undoes) "
                    "VALUES ('undo', 'human', ?, ?, ?, ?)",
                    (annotator or self.annotator, self._round, _now(), target),
                )
                conn.execute(
                    "UPDATE actions SET undone_by = ? WHERE action_id = ?", (undo_id, target)
                )
                restored: list[tuple[Any, str, str | None]] = []
                undo_events = []
                for sample_id, field, old, old_action in events:
                    now = conn.execute(
                        "SELECT value, action_id FROM state WHERE sample_id = ? AND field = ?",
                        (sample_id, field),
                    ).fetchone()
                    if self._shared and (now[1] if now else None) != target:
                        continue  # another annotator changed it since: theirs stays
                    undo_events.append(
                        (
                            undo_id,
                            sample_id,
                            field,
                            now[0] if now else None,
                            now[1] if now else None,
                            old,
                        )
                    )
                    if old is None:
                        conn.execute(
                            "DELETE FROM state WHERE sample_id = ? AND field = ?",
                            (sample_id, field),
                        )
                    else:
                        conn.execute(
                            _UPSERT_STATE,
                            (sample_id, field, old, old_action),
                        )
                    restored.append((self._py_id(sample_id), field, old))
                conn.executemany(
                    "INSERT INTO events(action_id, sample_id, field, old, old_action, new) VALUES (?, ?, ?, ?, ?, ?)",
                    undo_events,
                )
            self._apply_to_cache(restored)
        seen: dict[Any, None] = {}
        for sample_id, _, _ in reversed(restored):
            seen.setdefault(sample_id, None)
        return list(seen)

    def add_class(self, name: str) -> None:
        """Append a class to the list (classes are never removed or reordered)."""
        where = f"{self._api}.add_class"
        if not isinstance(name, str) or not name.strip():
            raise param_error("name", where, "a non-empty str", name, TypeError)
        if name in self._classes:
            raise ValueError(
                f"The 'name' parameter of {where} must be a new class. {name!r} exists already."
            )
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'classes'",
                    (json.dumps([*self._classes, name]),),
                )
            if name not in self._classes:  # a shared store caught up with it already
                self._classes.append(name)

    # ------------------------------------------------------------------ rounds and queries
    def begin_round(self) -> int:
        """Start the next round (called when a query batch is made); returns its number."""
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                new = self._round + 1  # fresh: a shared store syncs when a write begins
                conn.execute("UPDATE meta SET value = ? WHERE key = 'round'", (str(new),))
            self._round = new
            return new

    def log_query(
        self,
        strategy: str,
        ids: Sequence[Any],
        *,
        scores: Sequence[float] | None = None,
        model_version: int | None = None,
    ) -> None:
        """Record the batch a strategy picked in the current round (for replay and resume).
        A session uses :meth:`record_query`, which also starts the round."""
        self._check_open(writing=True)
        with self._lock, self._transaction() as conn:
            self._insert_query(conn, self._round, strategy, ids, scores, model_version)

    @staticmethod
    def _insert_query(
        conn: Any,
        rnd: int,
        strategy: str,
        ids: Sequence[Any],
        scores: Sequence[float] | None,
        model_version: int | None,
    ) -> None:
        conn.execute(
            "INSERT INTO queries(round, strategy, ts, model_version, sample_ids, scores) VALUES (?, ?, ?, ?, ?, ?)",
            (
                rnd,
                strategy,
                _now(),
                model_version,
                json.dumps(list(ids)),
                None if scores is None else json.dumps([float(s) for s in scores]),
            ),
        )

    def pending(self) -> list[Any]:
        """Ids of the newest query batch not labeled or skipped yet."""
        log = self.queries()
        if not log:
            return []
        done = set(self.labels) | self.marked("skip")
        return [i for i in log[-1]["ids"] if i not in done]

    def queries(self) -> list[dict[str, Any]]:
        """The query log, oldest first: round, strategy, ids, scores, model version, timestamp."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT round, strategy, ts, model_version, sample_ids, scores FROM queries ORDER BY query_id"
            ).fetchall()
        return [
            {
                "round": r[0],
                "strategy": r[1],
                "timestamp": _iso(r[2]),
                "model_version": r[3],
                "ids": json.loads(r[4]),
                "scores": None if r[5] is None else json.loads(r[5]),
            }
            for r in rows
        ]

    def record_query(
        self,
        strategy: str,
        ids: Sequence[Any],
        *,
        scores: Sequence[float] | None = None,
        model_version: int | None = None,
        infer_s: float | None = None,
        select_s: float | None = None,
    ) -> int:
        """Start the next round with the batch a strategy picked: the round number, the query
        log entry and the round's history row, in one transaction. Returns the round."""
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                rnd = self._round + 1  # fresh: a shared store syncs when a write begins
                row = RoundRecord(
                    rnd,
                    strategy=strategy,
                    queried=len(ids),
                    infer_s=infer_s,
                    select_s=select_s,
                    n_labels_at_query=len(self._labels),
                    model_version=model_version,
                )
                conn.execute("UPDATE meta SET value = ? WHERE key = 'round'", (str(rnd),))
                self._insert_query(conn, rnd, strategy, ids, scores, model_version)
                conn.execute(_UPSERT_ROUND, (rnd, json.dumps(row.as_dict())))
            self._round = rnd
        return rnd

    def update_round(self, round: int | None = None, **fields: Any) -> None:
        """Set fields of a round's history row (default: the current round); the names are
        :class:`RoundRecord`'s."""
        unknown = sorted(set(fields) - ROUND_FIELDS - {"round"})
        if unknown:
            raise TypeError(
                f"{self._api}.update_round got unknown field(s) {unknown}; a round row has "
                f"{sorted(ROUND_FIELDS)}."
            )
        self._check_open(writing=True)
        with self._lock, self._transaction() as conn:
            rnd = self._round if round is None else int(round)
            row = conn.execute("SELECT data FROM rounds WHERE round = ?", (rnd,)).fetchone()
            data = self._round_data(row[0]) if row else {"round": rnd}
            data.update(fields)
            conn.execute(_UPSERT_ROUND, (rnd, json.dumps(data)))

    def rounds(self) -> list[RoundRecord]:
        """The per-round history, in round order."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute("SELECT data FROM rounds ORDER BY round").fetchall()
        return [RoundRecord(**self._round_data(r[0])) for r in rows]

    def _round_data(self, text: str) -> dict[str, Any]:
        """A stored round row, checked: a damaged one is a StoreError naming the file."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("round"), int):
            raise self._damaged(
                f"a row of its round history is not a JSON round record: {text!r:.80}"
            )
        return {k: v for k, v in data.items() if k in ROUND_FIELDS}
