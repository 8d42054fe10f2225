"""The label store on a PostgreSQL server: the same record of actions as the SQLite store
(``_log.py``: actions, events, state, queries, rounds), one PostgreSQL schema per project.

- **Where**: project ``digits-v1`` lives in the schema ``dal_digits-v1`` of the database the URL
  names; a database holds any number of projects, and nothing of dal_widgets outside them.
- **One writer per project**, as with a store file: the writing store holds a session-level
  advisory lock on the project. A second writer (another kernel, another machine) gets
  :class:`StoreLockedError` naming the holder; ``read_only=True`` reads beside it. In one
  process a newer store on the same project takes it over and closes the older one (a
  re-run notebook cell). Every write transaction also takes the project's transaction lock,
  so writes are serialized whoever makes them.
- **Durable**: :meth:`label` returns after the server's commit (``synchronous_commit`` as the
  server has it: ``on`` by default, which waits for the write-ahead log on disk).
- **A lost connection** (the server restarted): reads reconnect by themselves; a write whose
  connection broke raises :class:`StoreError` (it is not confirmed: it may or may not be
  saved), and the next call reconnects, takes the lock again and re-reads the state, so
  the store shows what the server has. A label :meth:`label` returned for is never lost.
- **Credentials** come in the URL, ``PGPASSWORD`` or ``~/.pgpass``; the password never appears
  in errors or reprs.
- Sample ids are kept as JSON text (``7`` and ``"7"`` stay two ids); what is derived from
  the store (model checkpoints, map and embedding caches) is kept on this machine, in the
  user cache folder (:attr:`PostgresStore.side_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dal_widgets._checks import check_real, param_error
from dal_widgets._files import check_path_param, write_atomically
from dal_widgets._pgurl import Secret
from dal_widgets.store._errors import StoreError, StoreLockedError
from dal_widgets.store._export import _Exports
from dal_widgets.store._log import _EventLog
from dal_widgets.store._schema import _default_annotator, _Identity

__all__ = ["PostgresStore"]

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS meta(key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS actions(
    action_id bigserial PRIMARY KEY, kind text NOT NULL, source text NOT NULL, annotator text,
    round integer NOT NULL, ts double precision NOT NULL, undoes bigint, undone_by bigint);
CREATE TABLE IF NOT EXISTS events(
    rowid bigserial PRIMARY KEY, action_id bigint NOT NULL, sample_id text NOT NULL,
    field text NOT NULL, old text, old_action bigint, new text);
CREATE INDEX IF NOT EXISTS events_by_action ON events(action_id);
CREATE INDEX IF NOT EXISTS events_by_sample ON events(sample_id);
CREATE TABLE IF NOT EXISTS state(
    sample_id text NOT NULL, field text NOT NULL, value text NOT NULL,
    action_id bigint NOT NULL, PRIMARY KEY(sample_id, field));
CREATE TABLE IF NOT EXISTS queries(
    query_id bigserial PRIMARY KEY, round integer NOT NULL, strategy text NOT NULL,
    ts double precision NOT NULL, model_version integer, sample_ids text NOT NULL, scores text);
CREATE TABLE IF NOT EXISTS rounds(round integer PRIMARY KEY, data text NOT NULL)
"""
# ``rowid`` is a real column here: it stands for SQLite's implicit one in the shared SQL.

_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,49}")

# Writers of this process by (host, port, database, project): a newer one takes over.
_WRITERS: dict[tuple[str, int, str, str], weakref.ref[PostgresStore]] = {}
_WRITERS_LOCK = threading.Lock()


def lock_key(purpose: str, project: str) -> int:
    """The advisory lock of a project for ``purpose`` ("store", "store writes", "trainer"):
    a signed 64-bit number from the two names."""
    digest = hashlib.blake2b(f"dal_widgets {purpose} {project}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def check_project(project: Any, where: str) -> str:
    """A project name as a PostgreSQL store takes it, or a ValueError naming ``where``."""
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise param_error(
            "project",
            where,
            "a name of letters, digits, '_', '.' or '-' (up to 50, starting with a "
            "letter or digit)",
            project,
        )
    return project


def lock_holder(raw: Any, key: int) -> str | None:
    """Who holds the (session or transaction) advisory lock ``key`` of this database, as
    its connection named itself (``application_name``), with its address; None: no one."""
    hi, lo = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    row = raw.execute(
        "SELECT a.application_name, a.client_addr FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
        "AND l.granted AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid "
        "AND l.objsubid = 1 AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (hi, lo),
    ).fetchone()
    if row is None:
        return None
    name, addr = row
    return f"{name or 'an unnamed connection'}" + (f" from {addr}" if addr else "")


def _pg_sql(sql: str) -> str:
    """The shared SQL (``?`` placeholders) as psycopg takes it (``%s``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Conn:
    """The store's connection as the shared SQL uses it: ``execute`` and ``executemany`` with
    ``?`` placeholders. A read whose connection broke reconnects once and runs again."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        import psycopg

        store = self.store
        try:
            return store._raw().execute(_pg_sql(sql), tuple(args) or None)
        except psycopg.OperationalError:
            if store._in_transaction:
                raise
            store._drop()
            return store._raw().execute(_pg_sql(sql), tuple(args) or None)

    def executemany(self, sql: str, rows: Any) -> None:
        with self.store._raw().cursor() as cur:
            cur.executemany(_pg_sql(sql), [tuple(r) for r in rows])


class PostgresStore(_EventLog, _Exports):
    """A durable, undoable record of labels for one dataset, kept on a PostgreSQL server
    (see the module's notes). Everything :class:`LabelStore` does, with the same methods.

    Parameters
    ----------
    url : str or None
        ``postgresql://user@host:port/db``. None, or a bare ``"postgresql://"``, reads
        ``DAL_POSTGRES_URL`` (else libpq's ``PGHOST``, ``PGUSER``, ... variables).
    project : str
        The project's name (letters, digits, ``_ . -``; up to 50): its tables are the schema
        ``dal_<project>``. Created if missing.
    fingerprint, classes, dataset_name, multi_label
        As for :class:`LabelStore`: what the project is made for, checked when it is opened.
    annotator : str, optional
        Recorded with each action (default: the OS user name).
    read_only : bool
        Read without the writer's lock (beside the session that labels).
    side_dir : str or path, optional
        Where model checkpoints and caches derived from this project are kept on this
        machine (default: a folder per server, database and project in the user cache).
    reconnect_seconds : float
        How long a call keeps trying to reach the server after the connection broke.
    shared : bool
        Team mode: several sessions write the project at once (no writer lock; each write
        is serialized by the project's transaction lock). Each store catches up with the
        others' actions when it writes and every ``poll_seconds`` (listeners added with
        :meth:`add_change_listener` hear of them), and undo takes back only this
        annotator's own newest action, never over a newer change by someone else.
    """

    #: How often a shared store looks for the other sessions' actions.
    poll_seconds = 0.5

    _api = "PostgresStore"

    def __init__(
        self,
        url: str | None,
        *,
        project: str,
        fingerprint: str,
        classes: Sequence[str],
        dataset_name: str = "",
        annotator: str | None = None,
        read_only: bool = False,
        multi_label: bool = False,
        side_dir: str | os.PathLike[str] | None = None,
        reconnect_seconds: float = 30.0,
        shared: bool = False,
    ) -> None:
        expected = _Identity(fingerprint, list(classes), dataset_name, bool(multi_label))
        self._open(
            url, project, expected, read_only, annotator, side_dir, reconnect_seconds, shared=shared
        )

    @classmethod
    def open(
        cls,
        url: str | None,
        *,
        project: str,
        read_only: bool = True,
        annotator: str | None = None,
        side_dir: str | os.PathLike[str] | None = None,
    ) -> PostgresStore:
        """Open an existing project, taking its dataset and classes from the server (to
        read or export it); ``read_only=False`` to write as the constructor does."""
        store = cls.__new__(cls)
        store._open(url, project, None, read_only, annotator, side_dir, 30.0, where="open")
        return store

    # ------------------------------------------------------------------ opening
    def _open(
        self,
        url: str | None,
        project: str,
        expected: _Identity | None,
        read_only: bool,
        annotator: str | None,
        side_dir: str | os.PathLike[str] | None,
        reconnect_seconds: float,
        *,
        where: str = "",
        shared: bool = False,
    ) -> None:
        import psycopg
        from psycopg import sql

        where = f"{self._api}.{where}" if where else self._api
        self._secret = Secret(url, "url", where)
        check_project(project, where)
        if not isinstance(read_only, bool):
            raise param_error("read_only", where, "True or False", read_only, TypeError)
        self.project = project
        self.read_only = read_only
        self.annotator = annotator or _default_annotator()
        self.multi_label = bool(expected.multi_label) if expected is not None else False
        self.reconnect_seconds = check_real(reconnect_seconds, "reconnect_seconds", where, lo=0.0)
        self._given_side_dir = (
            None if side_dir is None else Path(check_path_param(side_dir, "side_dir", where))
        )
        self._lock = threading.RLock()
        self._closed_reason: str | None = None
        self._close_callbacks: dict[object, Callable[[str], Any]] = {}
        self.close_callback_errors: list[str] = []
        self._db_errors = (psycopg.Error,)
        self._key = lock_key("store", project)  # who writes: one alone, or a team (shared)
        self._xact_key = lock_key("store writes", project)  # each write transaction
        self._raw_conn: Any = None
        self._in_transaction = False
        self._writer_key: tuple[str, int, str, str] | None = None
        if not isinstance(shared, bool):
            raise param_error("shared", where, "True or False", shared, TypeError)
        self._shared = shared
        self._loaded = False  # the state is read: a shared store catches up from here on
        self._seen = 0  # the newest action this store's state includes
        self._others: dict[Any, None] = {}  # ids others changed, for the listeners
        self._listeners: dict[object, Callable[[list[Any]], Any]] = {}
        self._conn = _Conn(self)  # type: ignore[assignment]
        self.path = f"{self._secret} (project {project!r})"
        raw = self._connect()  # a wrong URL, password or server fails here, at once
        self._schema_sql = _SCHEMA.format(schema=sql.Identifier(self._schema).as_string(raw))
        try:
            if not read_only:
                self._peek_existing(raw, expected)  # before taking an older writer's place
                self._take_writer_lock(raw)
            self._init_schema(expected)
            self._labels: dict[Any, Any] = {}
            self._marks: dict[str, set[Any]] = {"skip": set(), "flag": set()}
            # Read first: a change committed meanwhile is applied again, which is harmless.
            self._seen = self._newest_action(raw)
            self._load_state()
            self._loaded = True
        except BaseException:
            self._shut("it failed to open")
            raise

    @property
    def _schema(self) -> str:
        return f"dal_{self.project}"

    def _connect(self) -> Any:
        """A new connection with the project's schema first on the search path."""
        import psycopg
        from psycopg import sql

        conn = self._secret.connect(autocommit=True, application_name=self._app_name())
        try:
            # The project's tables first; then where the team queue's tables are.
            conn.execute(
                sql.SQL('SET search_path TO {}, "$user", public').format(
                    sql.Identifier(self._schema)
                )
            )
            # A write waiting for a lock fails after 30 s rather than hanging the session.
            conn.execute("SET lock_timeout = '30s'")
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(
                f"{self.path} could not be used: {self._secret.hide(str(exc))}"
            ) from None
        self._raw_conn = conn
        return conn

    def _peek_existing(self, raw: Any, expected: _Identity | None) -> None:
        """Check an existing project's identity (StoreMismatchError) before writing to it."""
        import psycopg

        try:
            with raw.transaction():
                if not raw.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._schema,)
                ).fetchall():
                    return  # a new project
                meta = dict(raw.execute("SELECT key, value FROM meta").fetchall())
        except psycopg.errors.UndefinedTable:
            return  # a new project
        except psycopg.Error as exc:
            raise self._usable_error(exc) from None
        self._check_meta(meta, expected)

    def _take_writer_lock(self, raw: Any) -> None:
        """The project's writer lock (see :meth:`_try_writer_lock`); a store writing alone
        takes it over from an older one of this process (a re-run cell)."""
        info = raw.info
        key = (str(info.host), int(info.port), str(info.dbname), self.project)
        with _WRITERS_LOCK:
            ref = _WRITERS.get(key)
            older = ref() if ref is not None else None
        if older is not None and older is not self and not self._shared:
            older._close("taken over by a newer store on the same project", taken_over=True)
        if self._try_writer_lock(raw):
            if not self._shared:
                with _WRITERS_LOCK:
                    _WRITERS[key] = weakref.ref(self)
                self._writer_key = key
            return
        if self._shared:
            raise StoreLockedError(
                f"The label store {self.path} is open for writing by a session alone "
                f"({self._holder(raw)}), not as a team. Close that session (and reopen it "
                "with team=...), or open this one with read_only=True to look."
            )
        raise StoreLockedError(
            f"The label store {self.path} is open for writing in another session "
            f"({self._holder(raw)}; a team's sessions, or one alone). Close it, join a "
            "team with team=..., or open this one with read_only=True to look."
        )

    def _try_writer_lock(self, raw: Any) -> bool:
        """The project's writer lock on ``raw``'s session: exclusive for a store that writes
        alone, a share for a team's (so one alone and a team exclude each other)."""
        take = f"pg_try_advisory_lock{self._lock_kind}"
        return bool(raw.execute(f"SELECT {take}(%s)", (self._key,)).fetchone()[0])

    @property
    def _lock_kind(self) -> str:
        """The advisory functions' suffix for this store's writer lock: a team's is shared."""
        return "_shared" if self._shared else ""

    def _holder(self, raw: Any) -> str:
        """Who holds the project's writer lock, as its connection named itself."""
        return lock_holder(raw, self._key) or "its holder has just let go: try again"

    def lock_holder(self, key: int) -> str | None:
        """Who holds the advisory lock ``key`` in this database (the name its connection
        gave, and its address), or None."""
        with self._lock:
            return lock_holder(self._raw(), key)

    def _raw(self) -> Any:
        """The live connection, reconnecting (for up to ``reconnect_seconds``) when it broke;
        a writer takes its lock again and re-reads the state."""
        self._check_open()
        if self._raw_conn is not None and not self._raw_conn.closed:
            return self._raw_conn
        deadline = time.monotonic() + self.reconnect_seconds
        pause = 0.05
        while True:
            try:
                raw = self._connect()
                break
            except (ConnectionError, StoreError) as exc:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"The label store {self.path} lost its server and could not reach it "
                        f"again in {self.reconnect_seconds:g} s: {exc}"
                    ) from None
                time.sleep(pause)
                pause = min(2 * pause, 1.0)
        return self._resume(raw)

    def _resume(self, raw: Any) -> Any:
        """After a reconnect: a writer takes its lock again, and the state is re-read."""
        if not self.read_only:
            if not self._try_writer_lock(raw):
                holder = self._holder(raw)
                self._close(f"another session ({holder}) took the project while the "
                            "connection to the server was lost")  # fmt: skip
                self._check_open()
            self._reload()
        return raw

    def _reload(self) -> None:
        """Re-read the round, classes and state from the server (after a reconnect)."""
        meta = self._read_meta(self._conn)
        identity = _Identity(self._fingerprint, self._classes, self._dataset_name, self.multi_label)
        found, self._round = self._check_meta(meta, identity)
        self._classes = list(found.classes)
        labels, marks = dict(self._labels), {f: set(m) for f, m in self._marks.items()}
        self._labels.clear()
        for held in self._marks.values():
            held.clear()
        self._seen = self._newest_action(self._raw_conn)
        self._load_state()
        if self._shared and self._listeners:  # what changed meanwhile, for the listeners
            changed = {i for i in labels.keys() | self._labels.keys()
                       if labels.get(i) != self._labels.get(i)}  # fmt: skip
            for field, held in self._marks.items():
                changed |= held ^ marks[field]
            self._others.update(dict.fromkeys(changed))

    def _drop(self) -> None:
        """Forget a broken connection (the next call reconnects)."""
        raw, self._raw_conn = self._raw_conn, None
        if raw is not None:
            try:
                raw.close()
            except Exception:  # noqa: BLE001 (already broken)
                pass

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One write transaction under the project's transaction lock; psycopg's errors
        become StoreError (a lost connection: the change is not confirmed)."""
        import psycopg

        self._conn.execute("SELECT 1")  # a connection that broke since: reconnect first
        raw = self._raw()
        self._in_transaction = True
        try:
            with raw.transaction():
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (self._xact_key,))
                if self._shared and self._loaded:  # the others' actions, then this one
                    self._catch_up(raw, notify=True)
                    yield self._conn
                    self._catch_up(raw, notify=False)
                else:
                    yield self._conn
        except psycopg.OperationalError as exc:
            self._drop()
            raise StoreError(
                f"The label store {self.path} lost its connection to the server while saving "
                f"({self._secret.hide(str(exc)).strip()}); this change is not confirmed. The "
                "next call reconnects and shows what the server has: check, then retry."
            ) from None
        except psycopg.Error as exc:
            if self._shared and self._loaded:
                self._reload()  # the catch-up may have applied what was rolled back
            raise StoreError(
                f"The label store {self.path} could not save this change "
                f"({self._secret.hide(str(exc)).strip()}); nothing of it was saved."
            ) from None
        finally:
            self._in_transaction = False

    # ------------------------------------------------------------------ team mode
    @staticmethod
    def _newest_action(raw: Any) -> int:
        return int(raw.execute("SELECT coalesce(max(action_id), 0) FROM actions").fetchone()[0])

    def _catch_up(self, raw: Any, *, notify: bool) -> None:
        """Apply the actions newer than this store's state (under ``_lock``): the events in
        order, then the round and classes; ``notify``: they are others', for the listeners."""
        # The newest action first, then its events up to it: an action committed between
        # the reads is read next time, never skipped.
        newest = self._newest_action(raw)
        rows = raw.execute(
            "SELECT action_id, sample_id, field, new FROM events WHERE action_id > %s "
            "AND action_id <= %s ORDER BY action_id, rowid",
            (self._seen, newest),
        ).fetchall()
        meta = dict(
            raw.execute("SELECT key, value FROM meta WHERE key IN ('round', 'classes')").fetchall()
        )
        changes = [(self._py_id(sid), field, new) for _, sid, field, new in rows]
        self._round = int(meta.get("round", self._round))
        classes = json.loads(meta["classes"]) if "classes" in meta else self._classes
        self._classes[len(self._classes) :] = classes[len(self._classes) :]
        _EventLog._apply_to_cache(self, (c for c in changes if c[1] in ("label", *self._marks)))
        self._seen = max(self._seen, newest)
        if notify and self._listeners:
            for sid, _, _ in changes:
                self._others[sid] = None

    def team_record(
        self,
        votes: dict[Any, str | None],
        *,
        rule: str,
        resolve: Sequence[Any] = (),
        decisions: dict[Any, str] | None = None,
        source: str = "human",
        annotator: str | None = None,
    ) -> int | None:
        """One action of a shared project: this annotator's ``votes`` (the fields
        ``vote:<annotator>``; None takes one back) and the training label (``label``) of
        each voted and ``resolve`` item, as the team's labels decide it by ``rule``
        (:func:`dal_widgets.team.decide`), read inside this action's transaction, so the
        newest writer always sees every vote. ``decisions``: an adjudicator's, recorded as
        the fields ``decision:<annotator>``. Returns the action id, or None when nothing
        changed."""
        from dal_widgets.team import decide

        if not self._shared:
            raise StoreError(f"{self._api}.team_record needs a shared store (shared=True).")
        who = annotator or self.annotator
        decided = decisions or {}
        items = list(dict.fromkeys([*votes, *decided, *resolve]))

        def changes(_conn: Any) -> list[tuple[Any, str, str | None]]:
            picks = decide(self._raw_conn, self.project, rule, items)
            out: list[tuple[Any, str, str | None]] = [
                (i, f"vote:{who}", v) for i, v in votes.items()
            ] + [(i, f"decision:{who}", v) for i, v in decided.items()]
            return out + [(i, "label", picks.get(i)) for i in items
                          if self._labels.get(i) != picks.get(i)]  # fmt: skip

        if not items:
            return None
        return self._apply("label", changes, source=source, annotator=who) or None

    def _app_name(self) -> str:
        """How this store's connections name themselves (shown to whoever waits for a lock)."""
        return f"dal_widgets {self.annotator}@{socket.gethostname()}:{os.getpid()}"[:63]

    def connect(self) -> Any:
        """A new psycopg connection (autocommit) to this store's server and database."""
        return self._secret.connect(autocommit=True, application_name=self._app_name())

    def team_queue(self, **options: Any) -> Any:
        """The project's :class:`~dal_widgets.team.TeamQueue` for this store's annotator
        (``options``: overlap, lease_seconds, reconnect_seconds)."""
        from dal_widgets.team import TeamQueue

        return TeamQueue(
            self._secret.url, project=self.project, annotator=self.annotator, **options
        )

    def newest_own_events(self) -> list[tuple[Any, str, str | None, str | None]] | None:
        """The events of what :meth:`undo` would take back in a shared project (this
        annotator's newest action): ``(sample id, field, old, new)``; None when none."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT e.sample_id, e.field, e.old, e.new FROM events e WHERE e.action_id = ("
                "SELECT max(action_id) FROM actions WHERE kind != 'undo' AND undone_by IS NULL "
                "AND annotator = ? AND source != 'team') ORDER BY e.rowid",
                (self.annotator,),
            ).fetchall()
            if not rows:
                return None
        return [(self._py_id(sid), field, old, new) for sid, field, old, new in rows]

    def _apply_to_cache(self, changes: Any) -> None:
        if not self._shared:  # shared: the transaction caught up with its own action already
            super()._apply_to_cache(changes)

    def add_change_listener(self, callback: Callable[[list[Any]], Any]) -> Callable[[], None]:
        """Call ``callback(ids)`` (in the store's poll thread) when other sessions changed
        samples of this shared project: at most ``poll_seconds`` after their commit. Returns
        a function that unsubscribes."""
        if not callable(callback):
            raise param_error(
                "callback", f"{self._api}.add_change_listener", "a callable", callback, TypeError
            )
        token = object()
        with self._lock:
            self._listeners[token] = callback
            if self._shared and getattr(self, "_poller", None) is None:
                self._poller = threading.Thread(
                    target=self._poll, name=f"dal-store-poll-{self.project}", daemon=True
                )
                self._poller.start()

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.pop(token, None)

        return unsubscribe

    def _poll(self) -> None:
        """The poll thread of a shared store: catch up, then tell the listeners."""
        while self._closed_reason is None:
            time.sleep(self.poll_seconds)
            ids: list[Any] = []
            with self._lock:
                if self._closed_reason is not None:
                    break
                raw = self._raw_conn
                try:
                    if raw is None or raw.closed:  # one try to reconnect a beat, not a wait
                        raw = self._resume(self._connect())
                    if self._newest_action(raw) > self._seen:
                        self._catch_up(raw, notify=True)
                except Exception:  # noqa: BLE001 (a broken connection: drop it, try next beat)
                    if self._raw_conn is not None and self._raw_conn.closed is False:
                        try:
                            self._raw_conn.execute("SELECT 1")
                        except Exception:  # noqa: BLE001
                            self._drop()
                    continue
                ids, self._others = list(self._others), {}
                listeners = list(self._listeners.values())
            if ids:
                for callback in listeners:
                    try:
                        callback(ids)
                    except Exception:  # noqa: BLE001 (recorded; a view's bug must not stop it)
                        self.close_callback_errors.append(traceback.format_exc())

    # ------------------------------------------------------------------ errors
    def _read_meta(self, conn: Any) -> dict[str, str]:
        import psycopg

        missing = StoreError(
            f"There is no project {self.project!r} on {self._secret}: open it for "
            "writing once (read_only=False) to create it, or check the project's name."
        )
        try:
            if not conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = ?", (self._schema,)
            ).fetchall():
                raise missing
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except psycopg.errors.UndefinedTable:
            raise missing from None
        except psycopg.Error as exc:
            raise self._usable_error(exc) from None

    def _usable_error(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"The label store {self.path} is not usable: {self._secret.hide(str(exc)).strip()}."
        )

    def _damaged(self, what: str) -> StoreError:
        return StoreError(
            f"The label store {self.path} is damaged: {what}. Restore it from a copy (see "
            "PostgresStore.backup), or repair that row with psql."
        )

    @staticmethod
    def _db_id(sample_id: Any) -> Any:
        return json.dumps(sample_id)

    @staticmethod
    def _py_id(stored: Any) -> Any:
        try:
            return json.loads(stored)
        except (TypeError, ValueError):
            return stored  # reported as not an int or str by the state check

    def _insert_action(self, conn: Any, sql: str, args: tuple[Any, ...]) -> int:
        return int(conn.execute(sql + " RETURNING action_id", args).fetchone()[0])

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Reads in one repeatable-read transaction: one state of a project others write."""
        raw = self._raw()
        with raw.transaction():
            raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield

    def _after_copy(self, conn: Any) -> None:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('actions', 'action_id'), "
            "(SELECT coalesce(max(action_id), 0) + 1 FROM actions), false)"
        )

    # ------------------------------------------------------------------ reading
    @property
    def side_dir(self) -> Path:
        """This machine's folder for what is derived from the project (model checkpoints,
        map and embedding caches); not created here."""
        if self._given_side_dir is not None:
            return self._given_side_dir
        from dal_widgets.projection import _cache_home

        info = self._writer_key or ("", 0, "", self.project)
        if self._writer_key is None and self._raw_conn is not None:
            i = self._raw_conn.info
            info = (str(i.host), int(i.port), str(i.dbname), self.project)
        digest = hashlib.blake2b(
            json.dumps([*info, self._fingerprint]).encode(), digest_size=8
        ).hexdigest()
        return _cache_home() / "dal_widgets" / "postgres" / f"{self.project}-{digest}"

    # ------------------------------------------------------------------ closing
    def _shut(self, reason: str, *, taken_over: bool = False) -> list[Callable[[str], Any]]:
        with self._lock:
            callbacks = self._mark_closed(reason)
            if callbacks is None:
                return []
            raw, self._raw_conn = self._raw_conn, None
            if self._writer_key is not None:
                with _WRITERS_LOCK:
                    ref = _WRITERS.get(self._writer_key)
                    if ref is not None and ref() is self:
                        del _WRITERS[self._writer_key]
            if raw is not None:
                try:
                    if not self.read_only and not raw.closed:  # now, not when the server
                        # notices the closed connection: the next writer must not wait
                        unlock = f"pg_advisory_unlock{self._lock_kind}"
                        raw.execute(f"SELECT {unlock}(%s)", (self._key,))
                except Exception:  # noqa: BLE001 (closing: the server frees it with the session)
                    pass
                raw.close()
        return callbacks

    def __del__(self) -> None:
        try:
            if self._closed_reason is None and self._raw_conn is not None:
                self._raw_conn.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read-only" if self.read_only else "open")
        return (
            f"PostgresStore({str(self._secret)!r}, project={self.project!r}, {state}, "
            f"labels={len(getattr(self, '_labels', {}))}, round={getattr(self, '_round', 0)})"
        )

    # ------------------------------------------------------------------ copies
    def backup(self, path: str | os.PathLike[str]) -> Path:
        """Copy the whole project (every action, event, query and round) into a new SQLite
        store file at ``path``, written beside it and renamed into place."""
        from dal_widgets.store._copy import copy_store

        where = f"{self._api}.backup"
        target = Path(check_path_param(path, "path", where))
        if target.is_dir():
            raise StoreError(f"{where} cannot write {str(target)!r}: it is a folder.")

        def write(tmp: Path) -> None:
            copy_store(self, tmp).close()

        try:
            write_atomically(target, write)
        except OSError as exc:
            raise StoreError(f"{where} could not write {str(target)!r}: {exc}.") from None
        return target
