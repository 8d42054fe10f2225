"""The durable label store: SQLite in WAL mode, one transaction per action.

Every label action (label, unlabel, skip/flag marks, import) is a row in ``actions`` with who,
when, in which round and from which source, plus one ``events`` row per sample and field with
the value before and after. ``state`` holds the current value of each (sample, field). So:

* a label is on disk (committed, ``synchronous=FULL``) before :meth:`LabelStore.label` returns;
* undo restores the previous values of the newest action that is not undone yet, and is itself
  an action, so history is never rewritten;
* relabeling keeps the earlier label in ``events``;
* reopening the file resumes everything: labels, round, query log and per-round history.

One process at a time writes a store: opening takes an exclusive lock on ``<path>.lock``
(released by the OS if the process dies). A second :class:`LabelStore` on the same file in the
same process takes the store over and closes the first; another process gets a clear error and
may open the file with ``read_only=True``. All SQL is parameterized.
"""

from __future__ import annotations

import csv
import datetime as _dt
import getpass
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dal_widgets._checks import param_error, short_repr

__all__ = [
    "FIELDS",
    "SOURCES",
    "LabelStore",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
]

SCHEMA_VERSION = 1
#: Where a label came from.
SOURCES = ("human", "oracle", "import", "suggestion")
#: The per-sample fields the store keeps: the label, and the skip and flag marks.
FIELDS = ("label", "skip", "flag")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions(
    action_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    annotator TEXT,
    round INTEGER NOT NULL,
    ts REAL NOT NULL,
    undoes INTEGER,
    undone_by INTEGER
);
CREATE TABLE IF NOT EXISTS events(
    action_id INTEGER NOT NULL,
    sample_id NOT NULL,
    field TEXT NOT NULL,
    old TEXT,
    old_action INTEGER,
    new TEXT
);
CREATE INDEX IF NOT EXISTS events_by_action ON events(action_id);
CREATE INDEX IF NOT EXISTS events_by_sample ON events(sample_id);
CREATE TABLE IF NOT EXISTS state(
    sample_id NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    action_id INTEGER NOT NULL,
    PRIMARY KEY(sample_id, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queries(
    query_id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    ts REAL NOT NULL,
    model_version INTEGER,
    sample_ids TEXT NOT NULL,
    scores TEXT
);
CREATE TABLE IF NOT EXISTS rounds(round INTEGER PRIMARY KEY, data TEXT NOT NULL);
"""


class StoreError(ValueError):
    """A label store cannot be opened or written as asked."""


class StoreMismatchError(StoreError):
    """The store file belongs to another dataset (or an incompatible class list)."""


class StoreLockedError(StoreError):
    """Another process has the store open for writing."""


class StoreClosedError(StoreError):
    """The store was closed, or taken over by a newer LabelStore on the same file."""


# Open stores of this process by resolved path, so that re-running a notebook cell that makes a
# new Session on the same file takes the store over instead of failing on its own lock.
_OPEN: dict[str, weakref.ReferenceType[LabelStore]] = {}
_OPEN_LOCK = threading.Lock()


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat(timespec="milliseconds")


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in some containers
        return "unknown"


class LabelStore:
    """A durable, undoable record of labels for one dataset.

    Parameters
    ----------
    path : str or path
        The SQLite file (created if missing). ``":memory:"`` keeps everything in memory
        (no durability: for tests and throwaway experiments).
    fingerprint : str
        The dataset's fingerprint (``Dataset.fingerprint``); a store made for another dataset
        raises :class:`StoreMismatchError`.
    classes : sequence of str
        The class list. A store whose class list extends this one (classes added while
        labeling) is accepted and its list wins; any other difference is an error.
    dataset_name : str
        Stored for the error messages.
    annotator : str, optional
        Recorded with each action (default: the OS user name).
    read_only : bool
        Open without the write lock, for reading or exporting while another process labels.
    multi_label : bool
        Each label is a set of classes (stored as a JSON list in class order; ``labels`` gives
        tuples). Fixed when the store is made.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fingerprint: str,
        classes: Sequence[str],
        dataset_name: str = "",
        annotator: str | None = None,
        read_only: bool = False,
        multi_label: bool = False,
    ) -> None:
        self.path = str(path)
        self.multi_label = bool(multi_label)
        self.read_only = read_only
        self.annotator = annotator or _default_annotator()
        self._lock = threading.RLock()
        self._closed_reason: str | None = None
        self._lockfile: Any = None
        self._memory = self.path == ":memory:"
        if not self._memory:
            self._check_path(read_only)
            if not read_only:
                # Check that the file is ours before taking it over from another LabelStore.
                if Path(self.path).is_file() and Path(self.path).stat().st_size > 0:
                    self._peek(fingerprint, list(classes), dataset_name)
                self._take_lock()
        try:
            self._conn = self._connect()
            self._init_schema(fingerprint, list(classes), dataset_name)
        except BaseException:
            self._release_lock()
            raise
        self._labels: dict[Any, str] = {}
        self._marks: dict[str, set[Any]] = {"skip": set(), "flag": set()}
        self._load_state()

    # ------------------------------------------------------------------ opening
    def _check_path(self, read_only: bool) -> None:
        path = Path(self.path)
        where = "LabelStore"
        if path.is_dir():
            raise StoreError(
                f"The 'store' path {self.path!r} given to {where} is a folder; expected a file path such as 'labels.db'."
            )
        parent = path.parent if str(path.parent) else Path(".")
        if read_only:
            if not path.is_file():
                raise StoreError(
                    f"The 'store' path {self.path!r} given to {where} does not exist (read_only=True opens existing stores only)."
                )
            return
        if not parent.is_dir():
            raise StoreError(
                f"The 'store' path {self.path!r} given to {where} is in a folder that does not exist: {str(parent)!r}."
            )
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise StoreError(
                f"The 'store' path {self.path!r} given to {where} is not writable. Choose a path in "
                "a writable folder, or open it with read_only=True to only read it."
            )

    def _take_lock(self) -> None:
        import fcntl

        key = str(Path(self.path).resolve())
        with _OPEN_LOCK:
            ref = _OPEN.get(key)
            previous = ref() if ref is not None else None
            if previous is not None and not previous.closed:
                previous._close(
                    "it was opened again by a newer LabelStore (for example a new Session) on the same file"
                )
            try:
                handle = open(self.path + ".lock", "a+")
            except OSError as exc:
                raise StoreError(
                    f"The 'store' path {self.path!r} cannot be written ({exc.strerror}: {exc.filename}). "
                    "Choose a path in a writable folder."
                ) from None
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise StoreLockedError(
                    f"The label store {self.path!r} is open in another process. One process writes a "
                    "store at a time: close the other session (session.close()), or open this one "
                    "with read_only=True to read and export."
                ) from None
            self._lockfile = handle
            _OPEN[key] = weakref.ref(self)

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            try:
                self._lockfile.close()  # closing the descriptor releases the flock
            finally:
                self._lockfile = None

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                uri = Path(self.path).resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            else:
                conn = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=10.0
                )
                if not self._memory:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise StoreError(
                            f"The label store {self.path!r} could not switch to WAL mode (got {mode!r})."
                        )
                # FULL: a committed transaction survives power loss too, not only a crash.
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"The 'store' path {self.path!r} is not a usable SQLite label store: {exc}."
            ) from None

    def _peek(self, fingerprint: str, classes: list[str], dataset_name: str) -> None:
        try:
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"The 'store' path {self.path!r} is not a usable SQLite label store: {exc}."
            ) from None
        try:
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.DatabaseError as exc:
                if "no such table" in str(exc):
                    raise StoreError(
                        f"The 'store' path {self.path!r} is an SQLite file but not a dal_widgets label store."
                    ) from None
                raise StoreError(
                    f"The 'store' path {self.path!r} is not a usable SQLite label store: {exc}."
                ) from None
            self._check_meta(meta, fingerprint, classes, dataset_name)
        finally:
            conn.close()

    def _check_meta(
        self, meta: dict[str, str], fingerprint: str, classes: list[str], dataset_name: str
    ) -> None:
        if "fingerprint" not in meta:
            raise StoreError(
                f"The 'store' path {self.path!r} is an SQLite file but not a dal_widgets label store."
            )
        if int(meta.get("schema_version", "0")) > SCHEMA_VERSION:
            raise StoreError(
                f"The label store {self.path!r} was written by a newer dal_widgets (schema {meta['schema_version']})."
            )
        if meta["fingerprint"] != fingerprint:
            raise StoreMismatchError(
                f"The label store {self.path!r} belongs to another dataset: it was made for "
                f"{meta.get('dataset_name') or 'an unnamed dataset'!r} (fingerprint {meta['fingerprint']}), and "
                f"this one is {dataset_name or 'unnamed'!r} (fingerprint {fingerprint}). Use another "
                "store path for this dataset, or open the store with the dataset it was made for."
            )
        if meta.get("multi_label", "0") != ("1" if self.multi_label else "0"):
            kind = "multi-label" if meta.get("multi_label") == "1" else "single-label"
            raise StoreMismatchError(
                f"The label store {self.path!r} is {kind}; this session is "
                f"{'multi-label' if self.multi_label else 'single-label'}. Use another store path."
            )
        stored = json.loads(meta["classes"])
        if stored[: len(classes)] != classes:
            raise StoreMismatchError(
                f"The label store {self.path!r} has the classes {stored}, which do not start with "
                f"the dataset's classes {classes}. The class list is fixed when a store is made."
            )

    def _init_schema(self, fingerprint: str, classes: list[str], dataset_name: str) -> None:
        conn = self._conn
        try:
            if not self.read_only:
                with self._transaction():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    existing = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                    if not existing:
                        rows = {
                            "schema_version": str(SCHEMA_VERSION),
                            "fingerprint": fingerprint,
                            "dataset_name": dataset_name,
                            "classes": json.dumps(classes),
                            "round": "0",
                            "created": _iso(_now()),
                            "multi_label": "1" if self.multi_label else "0",
                        }
                        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", rows.items())
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"The 'store' path {self.path!r} is not a usable SQLite label store: {exc}."
            ) from None
        self._check_meta(meta, fingerprint, classes, dataset_name)
        stored = json.loads(meta["classes"])
        self._classes = list(stored)
        self._round = int(meta["round"])

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _load_state(self) -> None:
        rows = self._conn.execute("SELECT sample_id, field, value FROM state").fetchall()
        for sample_id, field, value in rows:
            if field == "label":
                self._labels[sample_id] = self._decode(value)
            elif field in self._marks:
                self._marks[field].add(sample_id)

    # ------------------------------------------------------------------ closing
    @property
    def closed(self) -> bool:
        """Whether this store can no longer be used."""
        return self._closed_reason is not None

    def _close(self, reason: str) -> None:
        with self._lock:
            if self._closed_reason is not None:
                return
            self._closed_reason = reason
            try:
                self._conn.close()
            finally:
                self._release_lock()

    def close(self) -> None:
        """Close the file and release the write lock. Idempotent."""
        self._close("close() was called")

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._release_lock()
        except Exception:  # noqa: BLE001 (interpreter shutdown: nothing sensible to do)
            pass

    def _check_open(self, writing: bool = False) -> None:
        if self._closed_reason is not None:
            raise StoreClosedError(
                f"The label store {self.path!r} is closed: {self._closed_reason}."
            )
        if writing and self.read_only:
            raise StoreError(
                f"The label store {self.path!r} was opened with read_only=True; it cannot be written."
            )

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read-only" if self.read_only else "open")
        return (
            f"LabelStore({self.path!r}, {state}, labels={len(self._labels)}, round={self._round})"
        )

    # ------------------------------------------------------------------ reading
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
            raise param_error("field", "LabelStore.marked", "'skip' or 'flag'", field)
        with self._lock:
            return set(self._marks[field])

    def __len__(self) -> int:
        return len(self._labels)

    def history(self, sample_id: Any = None) -> list[dict[str, Any]]:
        """Every event (oldest first), or those of one sample: what changed, when, by whom."""
        self._check_open()
        sql = (
            "SELECT e.sample_id, e.field, e.old, e.new, a.action_id, a.kind, a.source, a.annotator, "
            "a.round, a.ts, a.undoes, a.undone_by FROM events e JOIN actions a USING(action_id)"
        )
        args: tuple[Any, ...] = ()
        if sample_id is not None:
            sql += " WHERE e.sample_id = ?"
            args = (sample_id,)
        sql += " ORDER BY a.action_id, e.rowid"
        with self._lock:
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
        return out

    def records(self) -> list[dict[str, Any]]:
        """One row per labeled sample: id, label, round, source, annotator, ISO timestamp."""
        self._check_open()
        with self._lock:
            rows = self._conn.execute(
                "SELECT s.sample_id, s.value, a.round, a.source, a.annotator, a.ts FROM state s "
                "JOIN actions a ON a.action_id = s.action_id WHERE s.field = 'label' ORDER BY a.action_id, "
                "(SELECT MIN(e.rowid) FROM events e WHERE e.action_id = s.action_id AND e.sample_id = s.sample_id)"
            ).fetchall()
        return [
            {
                "sample_id": r[0],
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
        changes: Iterable[tuple[Any, str, str | None]],
        *,
        source: str,
        annotator: str | None,
    ) -> int:
        """Write one action: (sample_id, field, new value or None to clear). One transaction."""
        self._check_open(writing=True)
        if source not in SOURCES:
            raise param_error("source", "LabelStore", f"one of {SOURCES}", source)
        changes = list(changes)
        with self._lock:
            with self._transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO actions(kind, source, annotator, round, ts) VALUES (?, ?, ?, ?, ?)",
                    (kind, source, annotator or self.annotator, self._round, _now()),
                )
                action_id = int(cur.lastrowid or 0)
                self._write_changes(conn, action_id, changes)
            self._apply_to_cache(changes)
        return action_id

    def _write_changes(
        self, conn: sqlite3.Connection, action_id: int, changes: list[tuple[Any, str, str | None]]
    ) -> None:
        events = []
        for sample_id, field, new in changes:
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
                    "INSERT INTO state(sample_id, field, value, action_id) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(sample_id, field) DO UPDATE SET value = excluded.value, action_id = excluded.action_id",
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
        where = "LabelStore.label"
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
        where = "LabelStore.unlabel"
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
        where = "LabelStore.mark"
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
                row = conn.execute(
                    "SELECT action_id FROM actions WHERE kind != 'undo' AND undone_by IS NULL "
                    "ORDER BY action_id DESC LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                target = int(row[0])
                events = conn.execute(
                    "SELECT sample_id, field, old, old_action FROM events WHERE action_id = ? ORDER BY rowid DESC",
                    (target,),
                ).fetchall()
                cur = conn.execute(
                    "INSERT INTO actions(kind, source, annotator, round, ts, undoes) VALUES ('undo', 'human', ?, ?, ?, ?)",
                    (annotator or self.annotator, self._round, _now(), target),
                )
                undo_id = int(cur.lastrowid or 0)
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
                            "INSERT OR REPLACE INTO state(sample_id, field, value, action_id) VALUES (?, ?, ?, ?)",
                            (sample_id, field, old, old_action),
                        )
                    restored.append((sample_id, field, old))
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
        where = "LabelStore.add_class"
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
            self._classes.append(name)

    # ------------------------------------------------------------------ rounds and queries
    def begin_round(self) -> int:
        """Start the next round (called when a query batch is made); returns its number."""
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'round'", (str(self._round + 1),)
                )
            self._round += 1
            return self._round

    def log_query(
        self,
        strategy: str,
        ids: Sequence[Any],
        *,
        scores: Sequence[float] | None = None,
        model_version: int | None = None,
    ) -> None:
        """Record the batch a strategy picked in the current round (for replay and resume)."""
        self._check_open(writing=True)
        with self._lock, self._transaction() as conn:
            conn.execute(
                "INSERT INTO queries(round, strategy, ts, model_version, sample_ids, scores) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    self._round,
                    strategy,
                    _now(),
                    model_version,
                    json.dumps(list(ids)),
                    None if scores is None else json.dumps([float(s) for s in scores]),
                ),
            )

    def queries(self) -> list[dict[str, Any]]:
        """The query log, oldest first: round, strategy, ids, scores, model version, timestamp."""
        self._check_open()
        with self._lock:
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

    def update_round(self, round: int | None = None, **fields: Any) -> None:
        """Merge JSON-serializable fields into the history row of a round (default: current)."""
        self._check_open(writing=True)
        rnd = self._round if round is None else int(round)
        with self._lock, self._transaction() as conn:
            row = conn.execute("SELECT data FROM rounds WHERE round = ?", (rnd,)).fetchone()
            data = json.loads(row[0]) if row else {"round": rnd}
            data.update(fields)
            conn.execute(
                "INSERT OR REPLACE INTO rounds(round, data) VALUES (?, ?)", (rnd, json.dumps(data))
            )

    def rounds(self) -> list[dict[str, Any]]:
        """The per-round history rows, in round order."""
        self._check_open()
        with self._lock:
            rows = self._conn.execute("SELECT data FROM rounds ORDER BY round").fetchall()
        return [json.loads(r[0]) for r in rows]

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike[str], format: str | None = None) -> Path:
        """Write the current labels to CSV or JSON Lines (by suffix, or ``format``).

        The file is written beside its target and renamed into place, so an interrupted export
        never leaves a half-written file under the final name.
        """
        where = "LabelStore.export"
        target = Path(path)
        fmt = format or {
            ".csv": "csv",
            ".jsonl": "jsonl",
            ".json": "jsonl",
            ".ndjson": "jsonl",
        }.get(target.suffix.lower())
        if fmt not in ("csv", "jsonl"):
            raise param_error(
                "format",
                where,
                "'csv' or 'jsonl' (or a path ending in .csv or .jsonl)",
                format or str(target),
            )
        rows = self.records()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                if fmt == "csv":
                    writer = csv.DictWriter(
                        fh,
                        fieldnames=[
                            "sample_id",
                            "label",
                            "round",
                            "source",
                            "annotator",
                            "timestamp",
                        ],
                    )
                    writer.writeheader()
                    for rec in rows:  # multi-label sets as JSON lists, not Python reprs
                        if isinstance(rec["label"], list):
                            rec = {**rec, "label": json.dumps(rec["label"], ensure_ascii=False)}
                        writer.writerow(rec)
                else:
                    for rec in rows:
                        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(
                f"{where} could not write {str(target)!r}: {exc.strerror or exc}."
            ) from None
        return target

    def to_dataframe(self) -> Any:
        """The current labels as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("LabelStore.to_dataframe needs pandas: pip install pandas") from None
        frame = pd.DataFrame(
            self.records(),
            columns=["sample_id", "label", "round", "source", "annotator", "timestamp"],
        )
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        return frame


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error; SQLite errors become StoreError."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        conn = self.store._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"The label store {self.store.path!r} could not start a write: {exc}."
            ) from None
        return conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self.store._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
                return
            except sqlite3.Error as err:
                exc = err
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the failed COMMIT may have rolled back already
        if isinstance(exc, sqlite3.Error):
            raise StoreError(
                f"The label store {self.store.path!r} could not save this change ({exc}); nothing of "
                "it was saved. Free disk space or check the file's permissions, then retry."
            ) from None
