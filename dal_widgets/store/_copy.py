"""Copying a whole store between backends (SQLite file <-> PostgreSQL project), keeping every
action, event, query and round, with their ids, times and annotators."""

from __future__ import annotations

import json
import os
from typing import Any

from dal_widgets.store._errors import StoreError
from dal_widgets.store._log import _EventLog

__all__ = ["copy_store"]

_ACTIONS = "action_id, kind, source, annotator, round, ts, undoes, undone_by"
_QUERIES = "round, strategy, ts, model_version, sample_ids, scores"


def copy_store(
    source: _EventLog,
    target: str | os.PathLike[str],
    *,
    project: str | None = None,
    annotator: str | None = None,
) -> Any:
    """Copy ``source`` (an open store, SQLite or PostgreSQL) into a new store at ``target``:
    a file path, or a ``postgresql://`` URL with ``project``. Every action and event is kept
    as it is (ids, times, annotators, undos), so history, undo and the round log continue
    there. The target must be new or empty (no actions, queries or rounds).

    Returns the target store, open for writing (close it, or hand it to a Session).

    >>> copy_store(LabelStore("labels.db", ...), "postgresql://alice@db/labels",
    ...            project="digits-v1")                                  # doctest: +SKIP
    """
    from dal_widgets.store._sqlite import open_store

    if not isinstance(source, _EventLog):
        raise TypeError(
            "The 'source' parameter of copy_store must be an open LabelStore or PostgresStore. "
            f"Got {type(source).__name__} instead."
        )
    source._check_open(where="copy_store")
    dst = open_store(
        target,
        fingerprint=source.fingerprint,
        classes=source.classes,
        dataset_name=source.dataset_name,
        multi_label=source.multi_label,
        annotator=annotator or source.annotator,
        project=project,
        where="copy_store",
    )
    try:
        _copy_rows(source, dst)
    except BaseException:
        dst.close()
        raise
    return dst


def _copy_rows(source: _EventLog, dst: _EventLog) -> None:
    to_py, to_db = source._py_id, dst._db_id
    with source._lock, source._snapshot():
        read = source._conn.execute
        actions = read(f"SELECT {_ACTIONS} FROM actions ORDER BY action_id").fetchall()
        events = read(
            "SELECT action_id, sample_id, field, old, old_action, new FROM events "
            "ORDER BY action_id, rowid"
        ).fetchall()
        state = read("SELECT sample_id, field, value, action_id FROM state").fetchall()
        queries = read(f"SELECT {_QUERIES} FROM queries ORDER BY query_id").fetchall()
        rounds = read("SELECT round, data FROM rounds ORDER BY round").fetchall()
        rnd, classes = source.round, source.classes
    with dst._lock:
        with dst._transaction() as conn:
            used = [
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("actions", "queries", "rounds")
            ]
            if any(used):
                raise StoreError(
                    f"copy_store copies into a new store only; {dst.path} already has "
                    f"{used[0]} actions, {used[1]} queries and {used[2]} rounds. Give a new "
                    "file or project."
                )
            conn.executemany(
                f"INSERT INTO actions({_ACTIONS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", actions
            )
            conn.executemany(
                "INSERT INTO events(action_id, sample_id, field, old, old_action, new) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(a, to_db(to_py(s)), f, o, oa, n) for a, s, f, o, oa, n in events],
            )
            conn.executemany(
                "INSERT INTO state(sample_id, field, value, action_id) VALUES (?, ?, ?, ?)",
                [(to_db(to_py(s)), f, v, a) for s, f, v, a in state],
            )
            conn.executemany(f"INSERT INTO queries({_QUERIES}) VALUES (?, ?, ?, ?, ?, ?)", queries)
            conn.executemany("INSERT INTO rounds(round, data) VALUES (?, ?)", rounds)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'round'", (str(rnd),))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'classes'", (json.dumps(classes),))
            dst._after_copy(conn)
        dst._round = rnd
        dst._classes = list(classes)
        dst._labels.clear()
        for marks in dst._marks.values():
            marks.clear()
        dst._load_state()
