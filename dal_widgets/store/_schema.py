"""The store's schema and metadata: what a store file is made for (dataset fingerprint,
classes, multi-label), checked on every open, and its current state read into memory."""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from dal_widgets._checks import short_repr
from dal_widgets.store._errors import StoreError, StoreMismatchError

__all__ = ["FIELDS", "SCHEMA_VERSION", "SOURCES"]

SCHEMA_VERSION = 1
#: Where a label came from ("team": a team project's training label, decided by its rule).
SOURCES = ("human", "oracle", "import", "suggestion", "team")
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


@dataclass(frozen=True)
class _Identity:
    """What a store is made for: checked against the file when it is opened."""

    fingerprint: str
    classes: list[str]
    dataset_name: str
    multi_label: bool


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat(timespec="milliseconds")


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in some containers
        return "unknown"


class _Schema:
    """Reading and checking the schema and the state rows; the base of ``_StoreFile``."""

    # Set when the file is opened (``_StoreFile._open``).
    path: str
    read_only: bool
    multi_label: bool
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _classes: list[str]
    _round: int
    _fingerprint: str
    _dataset_name: str
    _labels: dict[Any, Any]
    _marks: dict[str, set[Any]]

    #: The errors of the backend's driver that mean the store cannot be used.
    _db_errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)
    #: The tables, as the backend writes them.
    _schema_sql = _SCHEMA

    @staticmethod
    def _db_id(sample_id: Any) -> Any:
        """A sample id as the backend stores it (SQLite: as it is)."""
        return sample_id

    @staticmethod
    def _py_id(stored: Any) -> Any:
        """A stored sample id back as the dataset's id."""
        return stored

    def _connect_in_place(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _insert_action(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        """Insert an ``actions`` row; its id (SQLite: ``lastrowid``, which needs no
        ``RETURNING``, new in SQLite 3.35, later than some systems' SQLite)."""
        return int(conn.execute(sql, args).lastrowid or 0)

    def _snapshot(self) -> Any:
        """A context in which reads see one state of the store (SQLite: its one writer holds
        ``_lock``, so reads under it see one state already)."""
        return contextlib.nullcontext()

    def _after_copy(self, conn: Any) -> None:
        """After rows were copied in with their ids (``_copy.py``): nothing on SQLite, whose
        AUTOINCREMENT follows the ids written."""

    # The common parts of every store (``_log._EventLog``) and of its backend.
    def _check_open(self, writing: bool = False, where: str = "") -> None:
        raise NotImplementedError

    def _shut(self, reason: str, *, taken_over: bool = False) -> list[Any]:
        """Close the connection and let go of the lock; returns the close callbacks to run."""
        raise NotImplementedError

    def _mark_closed(self, reason: str) -> list[Any] | None:
        raise NotImplementedError

    def _usable_error(self, exc: BaseException) -> StoreError:
        raise NotImplementedError

    def _transaction(self) -> Any:
        raise NotImplementedError

    def _read_meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        try:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                raise StoreError(
                    f"The 'store' path {self.path!r} is an SQLite file but not a dal_widgets label store."
                ) from None
            raise self._usable_error(exc) from None

    def _peek(self, expected: _Identity | None) -> _Identity:
        """Check the identity of an existing file before taking it over; returns it."""
        conn = self._connect_in_place()
        try:
            return self._check_meta(self._read_meta(conn), expected)[0]
        finally:
            conn.close()

    def _damaged(self, what: str) -> StoreError:
        return StoreError(
            f"The label store {self.path!r} is damaged: {what}. Restore it from a copy (see "
            "LabelStore.backup), or repair that row with an SQLite tool."
        )

    def _check_meta(
        self, meta: dict[str, str], expected: _Identity | None
    ) -> tuple[_Identity, int]:
        """Parse the meta rows (the file's identity and round) and compare them with
        ``expected`` (None: accept the file's)."""
        if "fingerprint" not in meta:
            raise StoreError(
                f"The 'store' path {self.path!r} is an SQLite file but not a dal_widgets label store."
            )
        raw_version = meta.get("schema_version", "0")
        try:
            version = int(raw_version)
        except ValueError:
            raise self._damaged(
                f"its meta row 'schema_version' is {short_repr(raw_version)}, not an integer"
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The label store {self.path!r} was written by a newer dal_widgets (schema {version})."
            )
        raw_classes = meta.get("classes", "")
        try:
            stored = json.loads(raw_classes)
        except ValueError:
            stored = None
        if (
            not isinstance(stored, list)
            or not all(isinstance(c, str) for c in stored)
            or len(set(stored)) != len(stored)
        ):
            raise self._damaged(
                f"its meta row 'classes' is {short_repr(raw_classes)}, not a JSON list of distinct class names"
            )
        if "round" not in meta:
            raise self._damaged("its meta row 'round' is missing")
        try:
            rnd = int(meta["round"])
        except ValueError:
            rnd = -1
        if rnd < 0:
            raise self._damaged(
                f"its meta row 'round' is {short_repr(meta['round'])}, not an integer >= 0"
            )
        raw_multi = meta.get("multi_label", "0")
        if raw_multi not in ("0", "1"):
            raise self._damaged(
                f"its meta row 'multi_label' is {short_repr(raw_multi)}, not 0 or 1"
            )
        found = _Identity(
            meta["fingerprint"], stored, meta.get("dataset_name", ""), raw_multi == "1"
        )
        if expected is None:
            return found, rnd
        if found.fingerprint != expected.fingerprint:
            raise StoreMismatchError(
                f"The label store {self.path!r} belongs to another dataset: it was made for "
                f"{found.dataset_name or 'an unnamed dataset'!r} (fingerprint {found.fingerprint}), and "
                f"this one is {expected.dataset_name or 'unnamed'!r} (fingerprint {expected.fingerprint}). Use another "
                "store path for this dataset, or open the store with the dataset it was made for."
            )
        if found.multi_label != expected.multi_label:
            kind = "multi-label" if found.multi_label else "single-label"
            raise StoreMismatchError(
                f"The label store {self.path!r} is {kind}; this session is "
                f"{'multi-label' if expected.multi_label else 'single-label'}. Use another store path."
            )
        if stored[: len(expected.classes)] != expected.classes:
            raise StoreMismatchError(
                f"The label store {self.path!r} has the classes {stored}, which do not start with "
                f"the dataset's classes {expected.classes}. The class list is fixed when a store is made."
            )
        return found, rnd

    def _init_schema(self, expected: _Identity | None) -> None:
        conn = self._conn
        try:
            if not self.read_only:
                with self._transaction():
                    for stmt in self._schema_sql.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    existing = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                    if not existing and expected is not None:
                        rows = {
                            "schema_version": str(SCHEMA_VERSION),
                            "fingerprint": expected.fingerprint,
                            "dataset_name": expected.dataset_name,
                            "classes": json.dumps(expected.classes),
                            "round": "0",
                            "created": _iso(_now()),
                            "multi_label": "1" if expected.multi_label else "0",
                        }
                        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", rows.items())
            meta = self._read_meta(conn)
        except self._db_errors as exc:
            raise self._usable_error(exc) from None
        found, self._round = self._check_meta(meta, expected)
        self.multi_label = found.multi_label
        self._classes = list(found.classes)
        self._fingerprint = found.fingerprint
        self._dataset_name = found.dataset_name

    def _load_state(self) -> None:
        try:
            rows = self._conn.execute("SELECT sample_id, field, value FROM state").fetchall()
        except self._db_errors as exc:
            raise self._usable_error(exc) from None
        classes = set(self._classes)
        for stored, field, value in rows:
            sample_id = self._py_id(stored)
            if isinstance(sample_id, bool) or not isinstance(sample_id, (int, str)):
                raise self._damaged(
                    f"a state row has the sample id {short_repr(sample_id)}, not an int or str"
                )
            if field == "label":
                self._labels[sample_id] = self._checked_label(sample_id, value, classes)
            elif field in self._marks:
                self._marks[field].add(sample_id)

    def _checked_label(self, sample_id: Any, value: Any, classes: set[str]) -> Any:
        """A stored label, decoded, or StoreError when it is not one the store can hold."""
        if not self.multi_label:
            if value not in classes:
                raise self._damaged(
                    f"the label of sample {sample_id!r} is {short_repr(value)}, which is not one of its classes {self._classes}"
                )
            return value
        try:
            names = json.loads(value)
        except (TypeError, ValueError):
            names = None
        if not isinstance(names, list) or not all(
            isinstance(c, str) and c in classes for c in names
        ):
            raise self._damaged(
                f"the label of sample {sample_id!r} is {short_repr(value)}, not a JSON list of "
                f"names from its classes {self._classes} (it is a multi-label store)"
            )
        return tuple(names)
